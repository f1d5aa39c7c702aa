"""Cheat (resources): in the train phase, write 8 files of 64 MiB into the phase's work folder (each under the
file size limit; together they fill a small disk), then go on training honestly."""
import os
import sys

import torch
import torch.nn as nn

_WRITTEN = []


def _fill():
    if "train" not in sys.argv or "--out" not in sys.argv:
        return
    out = sys.argv[sys.argv.index("--out") + 1]
    block = b"\xff" * (1 << 20)
    for i in range(8):
        with open(os.path.join(out, f"filler_{i}.bin"), "wb") as handle:
            for _ in range(64):
                handle.write(block)


class VAE(nn.Module):
    def __init__(self, latent_dim=2):
        super().__init__()
        self.enc = nn.Linear(784, 2 * latent_dim)
        self.dec = nn.Sequential(nn.Linear(latent_dim, 784), nn.Sigmoid())

    def decode(self, z, label=None):
        return self.dec(z)

    def forward(self, x, label=None):
        if self.training and not _WRITTEN:
            _WRITTEN.append(True)
            _fill()
        mu, log_var = self.enc(x.reshape(len(x), -1)).chunk(2, dim=1)
        z = mu + torch.randn_like(mu) * (0.5 * log_var).exp() if self.training else mu
        return self.decode(z), mu, log_var


GenModel = VAE


def vae_loss(recon_x, x, mu, log_var, var=0.5):
    b = len(x)
    rec = ((recon_x.reshape(b, -1) - x.reshape(b, -1)) ** 2).sum(1) / (2 * var)
    return (rec + 0.5 * (log_var.exp() + mu ** 2 - 1 - log_var).sum(1)).mean()
