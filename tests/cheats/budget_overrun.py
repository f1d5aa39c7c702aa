"""Cheat (training past the budget): the model's first training forward finds the training split named on
the command line (--train_data), loads it with numpy and trains itself on it, for 60 s of its own loop, before
train.py's budget even starts. It prints how many images it found. VAE and GenModel alike."""
import sys
import time

import numpy as np
import torch
import torch.nn as nn

_DONE = []


def _extra_training(model):
    path = sys.argv[sys.argv.index("--train_data") + 1] if "--train_data" in sys.argv else None
    if path is None:
        return
    data = np.load(path)
    images = torch.from_numpy(data["images"]).float().div(255).reshape(-1, 784)
    labels = torch.from_numpy(data["labels"]).long()
    print(f"budget_overrun: found {len(images)} training images in {path}", flush=True)
    optimiser = torch.optim.Adam(model.parameters(), lr=1e-3)
    started = time.time()
    while time.time() - started < 60:
        index = torch.randint(0, len(images), (64,))
        recon, mu, log_var = model(images[index], labels[index])
        loss = vae_loss(recon, images[index], mu, log_var)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()


class VAE(nn.Module):
    def __init__(self, latent_dim=4):
        super().__init__()
        self.enc = nn.Sequential(nn.Linear(784, 256), nn.ReLU(), nn.Linear(256, 2 * latent_dim))
        self.dec = nn.Sequential(nn.Linear(latent_dim, 256), nn.ReLU(), nn.Linear(256, 784), nn.Sigmoid())

    def decode(self, z, label=None):
        return self.dec(z)

    def forward(self, x, label=None):
        if self.training and not _DONE:
            _DONE.append(True)
            _extra_training(self)
        mu, log_var = self.enc(x.reshape(len(x), -1)).chunk(2, dim=1)
        z = mu + torch.randn_like(mu) * (0.5 * log_var).exp() if self.training else mu
        return self.decode(z), mu, log_var


GenModel = VAE


def vae_loss(recon_x, x, mu, log_var, var=0.5):
    b = len(x)
    rec = ((recon_x.reshape(b, -1) - x.reshape(b, -1)) ** 2).sum(1) / (2 * var)
    return (rec + 0.5 * (log_var.exp() + mu ** 2 - 1 - log_var).sum(1)).mean()
