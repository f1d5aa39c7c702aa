"""Cheat / sandbox probe: on import it writes a marker to $CHEAT_MARKER (default /tmp/vae_lab_cheat_marker), writes
vae_lab_cheat_parent_marker into the parent of cwd, and tries TCP to 1.1.1.1:80 and 127.0.0.1:$CHEAT_PORT (default 9), 1 s timeout.
Every attempt is in try/except and logged in PROBE_RESULTS; the model itself is honest."""
import os
import socket
import time

import torch
import torch.nn as nn
import torch.nn.functional as F

PROBE_RESULTS = {}


def _probe():
    stamp = f"pid={os.getpid()} cwd={os.getcwd()} time={time.time()}\n"
    marker = os.environ.get("CHEAT_MARKER") or "/tmp/vae_lab_cheat_marker"
    try:
        with open(marker, "a") as f:
            f.write(stamp)
        PROBE_RESULTS["marker"] = marker
    except Exception as e:
        PROBE_RESULTS["marker"] = repr(e)
    try:
        parent_file = os.path.join(os.path.dirname(os.path.abspath(os.getcwd())), "vae_lab_cheat_parent_marker")
        with open(parent_file, "a") as f:
            f.write(stamp)
        PROBE_RESULTS["parent"] = parent_file
    except Exception as e:
        PROBE_RESULTS["parent"] = repr(e)
    try:
        port = int(os.environ.get("CHEAT_PORT", "9"))
    except Exception:
        port = 9
    for host, p in (("1.1.1.1", 80), ("127.0.0.1", port)):
        try:
            s = socket.create_connection((host, p), timeout=1)
            try:
                s.sendall(b"vae-lab-cheat " + stamp.encode())
            except Exception:
                pass
            s.close()
            PROBE_RESULTS[f"{host}:{p}"] = "connected"
        except Exception as e:
            PROBE_RESULTS[f"{host}:{p}"] = repr(e)


try:
    _probe()
except Exception:
    pass


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
