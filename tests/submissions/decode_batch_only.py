"""Style: MLP with separate fc_mu / fc_logvar heads and latent_dim=2 by default (for 2-D plots).
GenModel.decode does torch.cat([z, F.one_hot(label, 10).float()], 1), so it works only with a [B]
label tensor: the handout's 0-dim label crashes (RuntimeError, 2-D vs 1-D cat) and an int crashes (TypeError)."""
import torch
import torch.nn as nn
import torch.nn.functional as F


class VAE(nn.Module):

    def __init__(self, latent_dim=2, hidden_dim=400):
        super().__init__()
        self.fc_enc = nn.Linear(784, hidden_dim)
        self.fc_mu = nn.Linear(hidden_dim, latent_dim)
        self.fc_logvar = nn.Linear(hidden_dim, latent_dim)
        self.fc_dec1 = nn.Linear(latent_dim, hidden_dim)
        self.fc_dec2 = nn.Linear(hidden_dim, 784)

    def encode(self, x):
        h = F.leaky_relu(self.fc_enc(x.flatten(start_dim=1)), 0.2)
        return self.fc_mu(h), self.fc_logvar(h)

    def reparameterize(self, mu, logvar):
        if self.training:
            return mu + torch.randn_like(mu) * (0.5 * logvar).exp()
        return mu

    def decode(self, z, label=None):
        h = F.leaky_relu(self.fc_dec1(z), 0.2)
        return torch.sigmoid(self.fc_dec2(h))

    def forward(self, x, label=None):
        mu, logvar = self.encode(x)
        return self.decode(self.reparameterize(mu, logvar)), mu, logvar


def vae_loss(recon_x, x, mu, log_var, var=0.5):
    recon_x = recon_x.view(x.size(0), -1)
    x = x.view(x.size(0), -1)
    KL = torch.sum(0.5 * (-1 + torch.exp(log_var) + mu ** 2 - log_var), dim=1)
    RE = torch.sum((x - recon_x) ** 2, dim=1) / (2 * var)
    return torch.mean(KL + RE)


class GenModel(nn.Module):

    def __init__(self, latent_dim=2, hidden_dim=400):
        super().__init__()
        self.fc_enc = nn.Linear(784 + 10, hidden_dim)
        self.fc_mu = nn.Linear(hidden_dim, latent_dim)
        self.fc_logvar = nn.Linear(hidden_dim, latent_dim)
        self.fc_dec1 = nn.Linear(latent_dim + 10, hidden_dim)
        self.fc_dec2 = nn.Linear(hidden_dim, 784)

    def encode(self, x, label):
        x = torch.cat([x.flatten(start_dim=1), F.one_hot(label, 10).float()], 1)
        h = F.leaky_relu(self.fc_enc(x), 0.2)
        return self.fc_mu(h), self.fc_logvar(h)

    def reparameterize(self, mu, logvar):
        if self.training:
            return mu + torch.randn_like(mu) * (0.5 * logvar).exp()
        return mu

    def decode(self, z, label):
        z = torch.cat([z, F.one_hot(label, 10).float()], 1)
        h = F.leaky_relu(self.fc_dec1(z), 0.2)
        return torch.sigmoid(self.fc_dec2(h))

    def forward(self, x, label):
        mu, logvar = self.encode(x, label)
        z = self.reparameterize(mu, logvar)
        return self.decode(z, label), mu, logvar
