"""The demo VAE a student may copy: the handout's MLP, 784 -> 400 -> latent -> 400 -> 784.

It meets the same contract as submission.VAE (labels are accepted and ignored) and trains
with `python train.py --task VAE0label --model demo`.
"""
import torch
from torch import nn


class VAE(nn.Module):
    def __init__(self, latent_dim: int = 20, hidden: int = 400):
        super().__init__()
        self.latent_dim = latent_dim
        self.encoder = nn.Sequential(nn.Flatten(), nn.Linear(784, hidden), nn.LeakyReLU(0.2))
        self.to_mu = nn.Linear(hidden, latent_dim)
        self.to_log_var = nn.Linear(hidden, latent_dim)
        self.decoder = nn.Sequential(
            nn.Linear(latent_dim, hidden), nn.LeakyReLU(0.2),
            nn.Linear(hidden, 784), nn.Sigmoid(),
        )

    def encode(self, x, labels=None):
        h = self.encoder(x.reshape(-1, 784))
        return self.to_mu(h), self.to_log_var(h).clamp(-30.0, 20.0)

    def reparameterize(self, mu, log_var):
        if not self.training:
            return mu
        return mu + torch.randn_like(mu) * torch.exp(0.5 * log_var)

    def decode(self, z, labels=None):
        return self.decoder(z).reshape(-1, 28, 28)

    def forward(self, x, labels=None):
        mu, log_var = self.encode(x)
        return self.decode(self.reparameterize(mu, log_var)), mu, log_var
