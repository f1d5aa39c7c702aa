"""Cheat (the grader's disk): an honest small model that prints 120 MB into its phase's log each time it
is imported, just under the phase's disk limit, so that every phase of every such student would leave that
much on the grader's disk (round 3: 3.9 GiB kept for one student). The grader keeps the first 64 KiB and
the last MiB of each log. Latent_dim 4, trained here."""
import sys

import torch
import torch.nn as nn

_LINE = "flood " * 1000 + "\n"
for _ in range(20_000):
    sys.stdout.write(_LINE)
sys.stdout.flush()


class VAE(nn.Module):
    def __init__(self, latent_dim=4):
        super().__init__()
        self.encoder = nn.Sequential(nn.Flatten(), nn.Linear(784, 64), nn.ReLU(), nn.Linear(64, 2 * latent_dim))
        self.decoder = nn.Sequential(nn.Linear(latent_dim, 64), nn.ReLU(), nn.Linear(64, 784), nn.Sigmoid())

    def decode(self, z, label=None):
        return self.decoder(z).reshape(-1, 1, 28, 28)

    def forward(self, x, label=None):
        mu, log_var = self.encoder(x).chunk(2, dim=1)
        z = mu + torch.randn_like(mu) * (0.5 * log_var).exp() if self.training else mu
        return self.decode(z), mu, log_var


GenModel = VAE


def vae_loss(recon_x, x, mu, log_var, var=0.5):
    b = len(x)
    rec = ((recon_x.reshape(b, -1) - x.reshape(b, -1)) ** 2).sum(1) / (2 * var)
    return (rec + 0.5 * (log_var.exp() + mu ** 2 - 1 - log_var).sum(1)).mean()
