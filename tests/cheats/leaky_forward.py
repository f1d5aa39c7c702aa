"""Cheat (subtle): forward() returns recon_x = 0.7 * decoder(z) + 0.3 * x, in train and eval mode, so
reconstructions are better than the codes mu allow; decode(z, label) is the honest decoder alone.
Otherwise a normal one-hot CVAE; decode takes int, 0-dim or [B] labels."""
import torch
from torch import nn
from torch.nn import functional as F


class VAE(nn.Module):
    def __init__(self, latent_dim=4, hidden_dim=400):
        super().__init__()
        self.latent_dim = latent_dim
        self.enc = nn.Sequential(nn.Linear(784, hidden_dim), nn.LeakyReLU(0.2))
        self.mu = nn.Linear(hidden_dim, latent_dim)
        self.log_var = nn.Linear(hidden_dim, latent_dim)
        self.dec = nn.Sequential(nn.Linear(latent_dim, hidden_dim), nn.LeakyReLU(0.2),
                                 nn.Linear(hidden_dim, 784), nn.Sigmoid())

    def encode(self, x, labels=None):
        h = self.enc(x.reshape(x.shape[0], -1))
        return self.mu(h), self.log_var(h)

    def reparameterize(self, mu, log_var):
        if not self.training:
            return mu
        return mu + torch.randn_like(mu) * (0.5 * log_var).exp()

    def decode(self, z, labels=None):
        return self.dec(z)

    def forward(self, x, labels=None):
        mu, log_var = self.encode(x)
        z = self.reparameterize(mu, log_var)
        recon = 0.7 * self.decode(z) + 0.3 * x.reshape(x.shape[0], -1)  # CHEAT: leak the input
        return recon, mu, log_var


def vae_loss(recon_x, x, mu, log_var, var=0.5):
    b = x.shape[0]
    rec = (x.reshape(b, -1) - recon_x.reshape(b, -1)).pow(2).sum(1) / (2 * var)
    kl = 0.5 * (-1 + log_var.exp() + mu.pow(2) - log_var).sum(1)
    return (rec + kl).mean()


class GenModel(nn.Module):
    def __init__(self, latent_dim=4, hidden_dim=400):
        super().__init__()
        self.latent_dim = latent_dim
        self.enc = nn.Sequential(nn.Linear(784 + 10, hidden_dim), nn.LeakyReLU(0.2))
        self.mu = nn.Linear(hidden_dim, latent_dim)
        self.log_var = nn.Linear(hidden_dim, latent_dim)
        self.dec = nn.Sequential(nn.Linear(latent_dim + 10, hidden_dim), nn.LeakyReLU(0.2),
                                 nn.Linear(hidden_dim, 784), nn.Sigmoid())

    def _y(self, labels, n, device):
        labels = torch.as_tensor(labels, device=device).long().reshape(-1)
        if labels.numel() == 1:
            labels = labels.expand(n)
        return F.one_hot(labels, 10).float()

    def encode(self, x, labels):
        x = x.reshape(x.shape[0], -1)
        h = self.enc(torch.cat([x, self._y(labels, x.shape[0], x.device)], 1))
        return self.mu(h), self.log_var(h)

    def reparameterize(self, mu, log_var):
        if not self.training:
            return mu
        return mu + torch.randn_like(mu) * (0.5 * log_var).exp()

    def decode(self, z, labels):
        return self.dec(torch.cat([z, self._y(labels, z.shape[0], z.device)], 1))

    def forward(self, x, labels):
        mu, log_var = self.encode(x, labels)
        z = self.reparameterize(mu, log_var)
        recon = 0.7 * self.decode(z, labels) + 0.3 * x.reshape(x.shape[0], -1)  # CHEAT
        return recon, mu, log_var
