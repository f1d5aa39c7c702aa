"""Cheat: mu/log_var have width latent_dim (default 1), but forward() also feeds the decoder a hidden 64-number side code
(an 8x8 average-pooled thumbnail of x), so reconstructions beat what the code allows; decode(z, label) has no side code
and uses zeros instead, so decoding mu alone gives much worse images. decode: int/0-dim/[B]."""
import torch
import torch.nn as nn
import torch.nn.functional as F

SIDE = 64


def _side_code(x):
    return F.adaptive_avg_pool2d(x.reshape(-1, 1, 28, 28), 8).flatten(1)


class VAE(nn.Module):
    def __init__(self, latent_dim=1, hidden_dim=400):
        super().__init__()
        self.fc1 = nn.Linear(784, hidden_dim)
        self.fc_mu = nn.Linear(hidden_dim, latent_dim)
        self.fc_logvar = nn.Linear(hidden_dim, latent_dim)
        self.fc2 = nn.Linear(latent_dim + SIDE, hidden_dim)
        self.fc3 = nn.Linear(hidden_dim, 784)

    def encode(self, x, label=None):
        h = F.leaky_relu(self.fc1(x.reshape(x.size(0), -1)), 0.2)
        return self.fc_mu(h), self.fc_logvar(h)

    def reparameterize(self, mu, log_var):
        if self.training:
            return mu + torch.randn_like(mu) * torch.exp(0.5 * log_var)
        return mu

    def _decode(self, z, side):
        return torch.sigmoid(self.fc3(F.leaky_relu(self.fc2(torch.cat([z, side], 1)), 0.2)))

    def decode(self, z, label=None):
        return self._decode(z, z.new_zeros(z.size(0), SIDE))

    def forward(self, x, label=None):
        h = F.leaky_relu(self.fc1(x.reshape(x.size(0), -1)), 0.2)
        mu, log_var = self.fc_mu(h), self.fc_logvar(h)
        side = _side_code(x)  # CHEAT: 64 extra numbers the KL term never sees
        return self._decode(self.reparameterize(mu, log_var), side), mu, log_var


def vae_loss(recon_x, x, mu, log_var, var=0.5):
    b = x.size(0)
    rec = ((x.reshape(b, -1) - recon_x.reshape(b, -1)) ** 2).sum(1) / (2 * var)
    kl = 0.5 * (-1 + log_var.exp() + mu ** 2 - log_var).sum(1)
    return (rec + kl).mean()


class GenModel(nn.Module):
    def __init__(self, latent_dim=1, hidden_dim=400):
        super().__init__()
        self.fc1 = nn.Linear(784 + 10, hidden_dim)
        self.fc_mu = nn.Linear(hidden_dim, latent_dim)
        self.fc_logvar = nn.Linear(hidden_dim, latent_dim)
        self.fc2 = nn.Linear(latent_dim + SIDE + 10, hidden_dim)
        self.fc3 = nn.Linear(hidden_dim, 784)

    @staticmethod
    def _onehot(label, n, device):
        label = torch.as_tensor(label, device=device).long().reshape(-1)
        if label.numel() == 1:
            label = label.expand(n)
        return F.one_hot(label, 10).float()

    def _hidden(self, x, y):
        return F.leaky_relu(self.fc1(torch.cat([x.reshape(x.size(0), -1), y], 1)), 0.2)

    def encode(self, x, label):
        h = self._hidden(x, self._onehot(label, x.size(0), x.device))
        return self.fc_mu(h), self.fc_logvar(h)

    def reparameterize(self, mu, log_var):
        if self.training:
            return mu + torch.randn_like(mu) * torch.exp(0.5 * log_var)
        return mu

    def _decode(self, z, side, y):
        return torch.sigmoid(self.fc3(F.leaky_relu(self.fc2(torch.cat([z, side, y], 1)), 0.2)))

    def decode(self, z, label):
        y = self._onehot(label, z.size(0), z.device)
        return self._decode(z, z.new_zeros(z.size(0), SIDE), y)

    def forward(self, x, label):
        y = self._onehot(label, x.size(0), x.device)
        h = self._hidden(x, y)
        mu, log_var = self.fc_mu(h), self.fc_logvar(h)
        side = _side_code(x)  # CHEAT: 64 extra numbers the KL term never sees
        return self._decode(self.reparameterize(mu, log_var), side, y), mu, log_var
