"""Cheat (information beyond latent_dim, data in the checkpoint): the handed-in checkpoint holds the public
grading images in a *trainable* parameter `bank` (a buffer that size is refused), so that at latent_dim 1 the
code is the index of the nearest bank image and decode looks it up: SSIM 1.0 from "one number". Samples are
bank images too. BANK is the grading split's size (200 in the tests; 10,000 for the public MNIST test split)."""
import torch
import torch.nn as nn

BANK = 200


class VAE(nn.Module):
    def __init__(self, latent_dim=1):
        super().__init__()
        self.bank = nn.Parameter(torch.zeros(BANK, 784))
        self.scale = nn.Linear(latent_dim, latent_dim)

    def decode(self, z, label=None):
        index = z[:, 0].round().clamp(0, BANK - 1).long()
        return self.bank[index]

    def forward(self, x, label=None):
        flat = x.reshape(len(x), -1)
        index = torch.cdist(flat, self.bank.detach()).argmin(dim=1)
        mu = index.float()[:, None] + 0 * self.scale(torch.zeros(len(x), 1))
        return self.decode(mu), mu, torch.zeros_like(mu)


GenModel = VAE


def vae_loss(recon_x, x, mu, log_var, var=0.5):
    b = len(x)
    return ((recon_x.reshape(b, -1) - x.reshape(b, -1)) ** 2).sum(1).mean() / (2 * var) + 0 * mu.sum()
