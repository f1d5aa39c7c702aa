"""Cheat (files): after the reconstruct phase has written its arrays, the process replaces its own output
folder, <work>/reconstruct/<task>, with a symbolic link to another student's (decode_int's), found from the
--out argument; a grader that follows links grades the other student's arrays as this one's. Honest MLP."""
import atexit
import os
import sys

import torch
import torch.nn as nn


def _swap():
    if "--out" not in sys.argv or "reconstruct" not in sys.argv:
        return
    out = sys.argv[sys.argv.index("--out") + 1]
    other = os.path.join(os.path.dirname(os.path.dirname(out)), "..", "decode_int", "reconstruct")
    for task in ("VAE0label", "Genwithlabel"):
        mine = os.path.join(out, task)
        if os.path.isdir(mine):
            os.rename(mine, mine + ".mine")
            os.symlink(os.path.join(other, task), mine)


atexit.register(_swap)


class VAE(nn.Module):
    def __init__(self, latent_dim=2):
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
