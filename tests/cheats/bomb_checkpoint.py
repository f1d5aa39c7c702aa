"""Cheat (resources): the code is an honest MLP; the attack is its handed-in checkpoints (built by the test),
8 MB files whose deflated entry inflates to more than 1 GiB: a grader that loads them itself, as the first
round's did in three places, runs out of memory (about 30 MB of such files exhaust a 24 GB host)."""
import torch
import torch.nn as nn


class VAE(nn.Module):
    def __init__(self, latent_dim=3):
        super().__init__()
        self.enc = nn.Linear(784, 2 * latent_dim)
        self.dec = nn.Sequential(nn.Linear(latent_dim, 784), nn.Sigmoid())

    def decode(self, z, label=None):
        return self.dec(z)

    def forward(self, x, label=None):
        mu, log_var = self.enc(x.reshape(len(x), -1)).chunk(2, dim=1)
        z = mu + torch.randn_like(mu) * (0.5 * log_var).exp() if self.training else mu
        return self.decode(z), mu, log_var


GenModel = VAE


def vae_loss(recon_x, x, mu, log_var, var=0.5):
    b = len(x)
    rec = ((recon_x.reshape(b, -1) - x.reshape(b, -1)) ** 2).sum(1) / (2 * var)
    return (rec + 0.5 * (log_var.exp() + mu ** 2 - 1 - log_var).sum(1)).mean()
