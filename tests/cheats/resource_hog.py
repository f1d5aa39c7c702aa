"""Cheat / sandbox probe: on import, if env CHEAT_HOG is `fork`, `memory`, `disk` or `sleep`, it tries to start 500 processes
(children sleep 60 s then exit), allocate 50 GB, write a 5 GB file (vae_lab_hog.bin in cwd), or sleep 10 hours.
With CHEAT_HOG unset (or any other value) it does nothing at import time and is an honest submission."""
import os
import time

import torch
import torch.nn as nn
import torch.nn.functional as F


def _hog(mode):
    if mode == "fork":
        children = []
        for _ in range(500):
            try:
                pid = os.fork()
            except Exception:
                break
            if pid == 0:  # child: never returns into the loop or the caller
                try:
                    time.sleep(60)
                finally:
                    os._exit(0)
            children.append(pid)
    elif mode == "memory":
        blocks = []
        try:
            for _ in range(50):
                blocks.append(b"\x01" * (1 << 30))  # 1 GiB each, really touched
        except MemoryError:
            pass
        globals()["_HOG_BLOCKS"] = blocks
    elif mode == "disk":
        chunk = b"\x00" * (64 << 20)
        try:
            with open("vae_lab_hog.bin", "wb") as f:
                for _ in range(5 * 16):  # 80 x 64 MiB = 5 GiB
                    f.write(chunk)
        except Exception:
            pass
    elif mode == "sleep":
        time.sleep(10 * 3600)


_mode = os.environ.get("CHEAT_HOG", "").strip().lower()
if _mode in ("fork", "memory", "disk", "sleep"):
    _hog(_mode)


class VAE(nn.Module):
    def __init__(self, latent_dim=8, hidden_dim=400):
        super().__init__()
        self.fc1 = nn.Linear(784, hidden_dim)
        self.fc_mu = nn.Linear(hidden_dim, latent_dim)
        self.fc_logvar = nn.Linear(hidden_dim, latent_dim)
        self.fc2 = nn.Linear(latent_dim, hidden_dim)
        self.fc3 = nn.Linear(hidden_dim, 784)

    def encode(self, x, label=None):
        h = F.leaky_relu(self.fc1(x.reshape(x.size(0), -1)), 0.2)
        return self.fc_mu(h), self.fc_logvar(h)

    def reparameterize(self, mu, log_var):
        if self.training:
            return mu + torch.randn_like(mu) * torch.exp(0.5 * log_var)
        return mu

    def decode(self, z, label=None):
        return torch.sigmoid(self.fc3(F.leaky_relu(self.fc2(z), 0.2)))

    def forward(self, x, label=None):
        mu, log_var = self.encode(x)
        return self.decode(self.reparameterize(mu, log_var)), mu, log_var


def vae_loss(recon_x, x, mu, log_var, var=0.5):
    b = x.size(0)
    rec = ((x.reshape(b, -1) - recon_x.reshape(b, -1)) ** 2).sum(1) / (2 * var)
    kl = 0.5 * (-1 + log_var.exp() + mu ** 2 - log_var).sum(1)
    return (rec + kl).mean()


class GenModel(nn.Module):
    def __init__(self, latent_dim=8, hidden_dim=400):
        super().__init__()
        self.fc1 = nn.Linear(784 + 10, hidden_dim)
        self.fc_mu = nn.Linear(hidden_dim, latent_dim)
        self.fc_logvar = nn.Linear(hidden_dim, latent_dim)
        self.fc2 = nn.Linear(latent_dim + 10, hidden_dim)
        self.fc3 = nn.Linear(hidden_dim, 784)

    @staticmethod
    def _onehot(label, n, device):
        label = torch.as_tensor(label, device=device).long().reshape(-1)
        if label.numel() == 1:
            label = label.expand(n)
        return F.one_hot(label, 10).float()

    def encode(self, x, label):
        x = x.reshape(x.size(0), -1)
        h = F.leaky_relu(self.fc1(torch.cat([x, self._onehot(label, x.size(0), x.device)], 1)), 0.2)
        return self.fc_mu(h), self.fc_logvar(h)

    def reparameterize(self, mu, log_var):
        if self.training:
            return mu + torch.randn_like(mu) * torch.exp(0.5 * log_var)
        return mu

    def decode(self, z, label):
        y = self._onehot(label, z.size(0), z.device)
        return torch.sigmoid(self.fc3(F.leaky_relu(self.fc2(torch.cat([z, y], 1)), 0.2)))

    def forward(self, x, label):
        mu, log_var = self.encode(x, label)
        return self.decode(self.reparameterize(mu, log_var), label), mu, log_var
