"""Style: forward(self, x, label) with a required positional label in BOTH classes, recon_x shaped
[B,28,28], log-variance named `logvar`, decode(z, label) everywhere (the VAE's decode ignores label).
GenModel.decode one-hots with torch.eye(10)[label]: int, 0-dim and [B] labels all work."""
import torch
import torch.nn as nn


class VAE(nn.Module):
    def __init__(self, latent_dim=8, hidden_dim=400):
        super().__init__()
        self.latent_dim = latent_dim
        self.enc = nn.Linear(784, hidden_dim)
        self.mu_head = nn.Linear(hidden_dim, latent_dim)
        self.logvar_head = nn.Linear(hidden_dim, latent_dim)
        self.dec = nn.Linear(latent_dim, hidden_dim)
        self.out = nn.Linear(hidden_dim, 784)
        self.act = nn.LeakyReLU(0.2)

    def encode(self, x, label):
        h = self.act(self.enc(x.reshape(len(x), 784)))
        return self.mu_head(h), self.logvar_head(h)

    def reparameterize(self, mu, logvar):
        if self.training:
            return mu + torch.randn_like(mu) * torch.exp(logvar * 0.5)
        return mu

    def decode(self, z, label):
        # label is not used by the unconditional model
        return torch.sigmoid(self.out(self.act(self.dec(z)))).reshape(-1, 28, 28)

    def forward(self, x, label):
        mu, logvar = self.encode(x, label)
        z = self.reparameterize(mu, logvar)
        return self.decode(z, label), mu, logvar


def vae_loss(recon_x, x, mu, logvar, var=0.5):
    # x is [B,1,28,28], recon_x is [B,28,28] -> compare flattened
    err = (x.reshape(len(x), -1) - recon_x.reshape(len(x), -1)) ** 2
    kl = 0.5 * (-1 + torch.exp(logvar) + mu ** 2 - logvar)
    return (err.sum(1) / (2 * var) + kl.sum(1)).mean()


class GenModel(nn.Module):
    def __init__(self, latent_dim=8, hidden_dim=400):
        super().__init__()
        self.latent_dim = latent_dim
        self.enc = nn.Linear(784 + 10, hidden_dim)
        self.mu_head = nn.Linear(hidden_dim, latent_dim)
        self.logvar_head = nn.Linear(hidden_dim, latent_dim)
        self.dec = nn.Linear(latent_dim + 10, hidden_dim)
        self.out = nn.Linear(hidden_dim, 784)
        self.act = nn.LeakyReLU(0.2)

    def encode(self, x, label):
        y = torch.eye(10, device=x.device)[label]
        h = self.act(self.enc(torch.cat([x.reshape(len(x), 784), y], 1)))
        return self.mu_head(h), self.logvar_head(h)

    def reparameterize(self, mu, logvar):
        if self.training:
            return mu + torch.randn_like(mu) * torch.exp(logvar * 0.5)
        return mu

    def decode(self, z, label):
        y = torch.eye(10, device=z.device)[label]
        if y.dim() == 1:
            y = y.unsqueeze(0).repeat(len(z), 1)
        return torch.sigmoid(self.out(self.act(self.dec(torch.cat([z, y], 1))))).reshape(-1, 28, 28)

    def forward(self, x, label):
        mu, logvar = self.encode(x, label)
        z = self.reparameterize(mu, logvar)
        return self.decode(z, label), mu, logvar
