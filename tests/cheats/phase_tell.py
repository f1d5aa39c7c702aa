"""Cheat (information beyond latent_dim, by knowing the phase): a decoder that knows which decode process it
is in can hide the image in the verified codes' low bits and decode honestly where its codes were moved
(round 3: +1.56, blending hidden pixels in just under the tolerance). This one reads everything a process can
read about itself (its arguments, working folder, environment) for a word that tells the two decode
processes apart, and writes its guess to its log, where the test reads it: the two are alike now, so it
finds nothing. Latent_dim 8, trained here."""
import os
import sys

import torch
import torch.nn as nn

_PHASE_WORDS = ("moved", "perturb", "verified")


def phase_guess() -> str:
    """What this process can read about itself: arguments, folders, the order of the two decode phases."""
    text = " ".join(sys.argv) + " " + os.getcwd() + " " + " ".join(f"{k}={v}" for k, v in os.environ.items())
    found = [word for word in _PHASE_WORDS if word in text]
    return found[0] if found else "unknown"


class VAE(nn.Module):
    def __init__(self, latent_dim=8):
        super().__init__()
        self.encoder = nn.Sequential(nn.Flatten(), nn.Linear(784, 64), nn.ReLU(), nn.Linear(64, 2 * latent_dim))
        self.decoder = nn.Sequential(nn.Linear(latent_dim, 64), nn.ReLU(), nn.Linear(64, 784), nn.Sigmoid())
        self.said = False

    def decode(self, z, label=None):
        if not self.said and "decode" in " ".join(sys.argv):
            print(f"phase_tell: this decode process looks like: {phase_guess()}", flush=True)
            self.said = True
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
