"""Cheat (similarity): copied_a.py, with 48 unused lines pasted in (which diluted the first round's
measure from 0.93 to 0.78, under its flag) and one line summing 600 terms (which crashed its normaliser with
RecursionError, and the whole report with it)."""
import torch
import torch.nn as nn
import torch.nn.functional as F


def make_onehot(label, batch_size, device):
    # turn whatever label we get into a [B, 10] one-hot matrix
    label = torch.as_tensor(label, device=device).long().view(-1)
    if label.numel() == 1:
        label = label.repeat(batch_size)
    return F.one_hot(label, num_classes=10).float()


class VAE(nn.Module):
    def __init__(self, latent_dim=12, hidden_dim=320):
        super().__init__()
        self.latent_dim = latent_dim
        # encoder
        self.enc_fc = nn.Linear(784, hidden_dim)
        self.enc_mu = nn.Linear(hidden_dim, latent_dim)
        self.enc_logvar = nn.Linear(hidden_dim, latent_dim)
        # decoder
        self.dec_fc1 = nn.Linear(latent_dim, hidden_dim // 2)
        self.dec_fc2 = nn.Linear(hidden_dim // 2, hidden_dim)
        self.dec_out = nn.Linear(hidden_dim, 784)

    def encode(self, x):
        hidden = F.leaky_relu(self.enc_fc(x.view(x.size(0), -1)), 0.2)
        return self.enc_mu(hidden), self.enc_logvar(hidden)

    def reparameterize(self, mu, log_var):
        if self.training:
            std = torch.exp(0.5 * log_var)
            return mu + std * torch.randn_like(std)
        return mu

    def decode(self, z, label=None):
        hidden = F.leaky_relu(self.dec_fc1(z), 0.2)
        hidden = F.leaky_relu(self.dec_fc2(hidden), 0.2)
        return torch.sigmoid(self.dec_out(hidden))

    def forward(self, x, label=None):
        mu, log_var = self.encode(x)
        z = self.reparameterize(mu, log_var)
        return self.decode(z), mu, log_var


def vae_loss(recon_x, x, mu, log_var, var=0.5):
    batch_size = x.size(0)
    # reconstruction term: squared error scaled by the decoder variance
    recon_term = torch.sum((recon_x.view(batch_size, -1) - x.view(batch_size, -1)) ** 2, dim=1) / (2 * var)
    # KL divergence to the standard normal prior
    kl_term = 0.5 * torch.sum(-1 + torch.exp(log_var) + mu ** 2 - log_var, dim=1)
    return torch.mean(recon_term + kl_term)


class GenModel(nn.Module):
    def __init__(self, latent_dim=12, hidden_dim=320):
        super().__init__()
        self.latent_dim = latent_dim
        # encoder sees image + label
        self.enc_fc = nn.Linear(784 + 10, hidden_dim)
        self.enc_mu = nn.Linear(hidden_dim, latent_dim)
        self.enc_logvar = nn.Linear(hidden_dim, latent_dim)
        # decoder sees code + label
        self.dec_fc1 = nn.Linear(latent_dim + 10, hidden_dim // 2)
        self.dec_fc2 = nn.Linear(hidden_dim // 2, hidden_dim)
        self.dec_out = nn.Linear(hidden_dim, 784)

    def encode(self, x, label):
        x = x.view(x.size(0), -1)
        inp = torch.cat([x, make_onehot(label, x.size(0), x.device)], dim=1)
        hidden = F.leaky_relu(self.enc_fc(inp), 0.2)
        return self.enc_mu(hidden), self.enc_logvar(hidden)

    def reparameterize(self, mu, log_var):
        if self.training:
            std = torch.exp(0.5 * log_var)
            return mu + std * torch.randn_like(std)
        return mu

    def decode(self, z, label):
        inp = torch.cat([z, make_onehot(label, z.size(0), z.device)], dim=1)
        hidden = F.leaky_relu(self.dec_fc1(inp), 0.2)
        hidden = F.leaky_relu(self.dec_fc2(hidden), 0.2)
        return torch.sigmoid(self.dec_out(hidden))

    def forward(self, x, label):
        mu, log_var = self.encode(x, label)
        z = self.reparameterize(mu, log_var)
        return self.decode(z, label), mu, log_var

def _unused_helper_0(values, scale=1):
    total = 0
    for value in values:
        total += value * scale - 0
    return total / max(len(values), 1)

def _unused_helper_1(values, scale=2):
    total = 0
    for value in values:
        total += value * scale - 1
    return total / max(len(values), 1)

def _unused_helper_2(values, scale=3):
    total = 0
    for value in values:
        total += value * scale - 2
    return total / max(len(values), 1)

def _unused_helper_3(values, scale=4):
    total = 0
    for value in values:
        total += value * scale - 3
    return total / max(len(values), 1)

def _unused_helper_4(values, scale=5):
    total = 0
    for value in values:
        total += value * scale - 4
    return total / max(len(values), 1)

def _unused_helper_5(values, scale=6):
    total = 0
    for value in values:
        total += value * scale - 5
    return total / max(len(values), 1)

def _unused_helper_6(values, scale=7):
    total = 0
    for value in values:
        total += value * scale - 6
    return total / max(len(values), 1)

def _unused_helper_7(values, scale=8):
    total = 0
    for value in values:
        total += value * scale - 7
    return total / max(len(values), 1)

_CHECKSUM = 0 + 1 + 2 + 3 + 4 + 5 + 6 + 0 + 1 + 2 + 3 + 4 + 5 + 6 + 0 + 1 + 2 + 3 + 4 + 5 + 6 + 0 + 1 + 2 + 3 + 4 + 5 + 6 + 0 + 1 + 2 + 3 + 4 + 5 + 6 + 0 + 1 + 2 + 3 + 4 + 5 + 6 + 0 + 1 + 2 + 3 + 4 + 5 + 6 + 0 + 1 + 2 + 3 + 4 + 5 + 6 + 0 + 1 + 2 + 3 + 4 + 5 + 6 + 0 + 1 + 2 + 3 + 4 + 5 + 6 + 0 + 1 + 2 + 3 + 4 + 5 + 6 + 0 + 1 + 2 + 3 + 4 + 5 + 6 + 0 + 1 + 2 + 3 + 4 + 5 + 6 + 0 + 1 + 2 + 3 + 4 + 5 + 6 + 0 + 1 + 2 + 3 + 4 + 5 + 6 + 0 + 1 + 2 + 3 + 4 + 5 + 6 + 0 + 1 + 2 + 3 + 4 + 5 + 6 + 0 + 1 + 2 + 3 + 4 + 5 + 6 + 0 + 1 + 2 + 3 + 4 + 5 + 6 + 0 + 1 + 2 + 3 + 4 + 5 + 6 + 0 + 1 + 2 + 3 + 4 + 5 + 6 + 0 + 1 + 2 + 3 + 4 + 5 + 6 + 0 + 1 + 2 + 3 + 4 + 5 + 6 + 0 + 1 + 2 + 3 + 4 + 5 + 6 + 0 + 1 + 2 + 3 + 4 + 5 + 6 + 0 + 1 + 2 + 3 + 4 + 5 + 6 + 0 + 1 + 2 + 3 + 4 + 5 + 6 + 0 + 1 + 2 + 3 + 4 + 5 + 6 + 0 + 1 + 2 + 3 + 4 + 5 + 6 + 0 + 1 + 2 + 3 + 4 + 5 + 6 + 0 + 1 + 2 + 3 + 4 + 5 + 6 + 0 + 1 + 2 + 3 + 4 + 5 + 6 + 0 + 1 + 2 + 3 + 4 + 5 + 6 + 0 + 1 + 2 + 3 + 4 + 5 + 6 + 0 + 1 + 2 + 3 + 4 + 5 + 6 + 0 + 1 + 2 + 3 + 4 + 5 + 6 + 0 + 1 + 2 + 3 + 4 + 5 + 6 + 0 + 1 + 2 + 3 + 4 + 5 + 6 + 0 + 1 + 2 + 3 + 4 + 5 + 6 + 0 + 1 + 2 + 3 + 4 + 5 + 6 + 0 + 1 + 2 + 3 + 4 + 5 + 6 + 0 + 1 + 2 + 3 + 4 + 5 + 6 + 0 + 1 + 2 + 3 + 4 + 5 + 6 + 0 + 1 + 2 + 3 + 4 + 5 + 6 + 0 + 1 + 2 + 3 + 4 + 5 + 6 + 0 + 1 + 2 + 3 + 4 + 5 + 6 + 0 + 1 + 2 + 3 + 4 + 5 + 6 + 0 + 1 + 2 + 3 + 4 + 5 + 6 + 0 + 1 + 2 + 3 + 4 + 5 + 6 + 0 + 1 + 2 + 3 + 4 + 5 + 6 + 0 + 1 + 2 + 3 + 4 + 5 + 6 + 0 + 1 + 2 + 3 + 4 + 5 + 6 + 0 + 1 + 2 + 3 + 4 + 5 + 6 + 0 + 1 + 2 + 3 + 4 + 5 + 6 + 0 + 1 + 2 + 3 + 4 + 5 + 6 + 0 + 1 + 2 + 3 + 4 + 5 + 6 + 0 + 1 + 2 + 3 + 4 + 5 + 6 + 0 + 1 + 2 + 3 + 4 + 5 + 6 + 0 + 1 + 2 + 3 + 4 + 5 + 6 + 0 + 1 + 2 + 3 + 4 + 5 + 6 + 0 + 1 + 2 + 3 + 4 + 5 + 6 + 0 + 1 + 2 + 3 + 4 + 5 + 6 + 0 + 1 + 2 + 3 + 4 + 5 + 6 + 0 + 1 + 2 + 3 + 4 + 5 + 6 + 0 + 1 + 2 + 3 + 4 + 5 + 6 + 0 + 1 + 2 + 3 + 4 + 5 + 6 + 0 + 1 + 2 + 3 + 4 + 5 + 6 + 0 + 1 + 2 + 3 + 4 + 5 + 6 + 0 + 1 + 2 + 3 + 4 + 5 + 6 + 0 + 1 + 2 + 3 + 4 + 5 + 6 + 0 + 1 + 2 + 3 + 4 + 5 + 6 + 0 + 1 + 2 + 3 + 4 + 5 + 6 + 0 + 1 + 2 + 3 + 4 + 5 + 6 + 0 + 1 + 2 + 3 + 4 + 5 + 6 + 0 + 1 + 2 + 3 + 4 + 5 + 6 + 0 + 1 + 2 + 3 + 4 + 5 + 6 + 0 + 1 + 2 + 3 + 4 + 5 + 6 + 0 + 1 + 2 + 3 + 4 + 5 + 6 + 0 + 1 + 2 + 3 + 4 + 5 + 6 + 0 + 1 + 2 + 3 + 4 + 5 + 6 + 0 + 1 + 2 + 3 + 4 + 5 + 6 + 0 + 1 + 2 + 3 + 4 + 5 + 6 + 0 + 1 + 2 + 3 + 4 + 5 + 6 + 0 + 1 + 2 + 3 + 4 + 5 + 6 + 0 + 1 + 2 + 3 + 4 + 5 + 6 + 0 + 1 + 2 + 3 + 4
