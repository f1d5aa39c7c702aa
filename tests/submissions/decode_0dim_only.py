"""Style: Sequential MLP, one 2*latent head sliced into mu/log_var; GenModel.decode builds a [1,10] one-hot with onehot[0, label] = 1
and expands it (written for the handout's one-at-a-time loop). 0-dim and int labels work; a [B] label never crashes but
SILENTLY gives wrong images when the labels differ (one shared multi-hot row); with B equal labels it happens to be right."""
import torch
from torch import nn
import torch.nn.functional as F


class VAE(nn.Module):
    def __init__(self, latent_dim=10, hidden_dim=256):
        super().__init__()
        self.latent_dim = latent_dim
        # encoder outputs mu and log_var stacked
        self.encoder = nn.Sequential(
            nn.Linear(28 * 28, hidden_dim),
            nn.ReLU(),
            nn.Linear(hidden_dim, 2 * latent_dim),
        )
        self.decoder = nn.Sequential(
            nn.Linear(latent_dim, hidden_dim),
            nn.ReLU(),
            nn.Linear(hidden_dim, 28 * 28),
            nn.Sigmoid(),
        )

    def encode(self, x):
        out = self.encoder(x.reshape(x.shape[0], -1))
        return out[:, :self.latent_dim], out[:, self.latent_dim:]

    def reparameterize(self, mu, log_var):
        if not self.training:
            return mu
        return mu + torch.exp(log_var / 2) * torch.randn_like(mu)

    def decode(self, z, label=None):
        return self.decoder(z)

    def forward(self, x, labels=None):
        mu, log_var = self.encode(x)
        z = self.reparameterize(mu, log_var)
        return self.decode(z), mu, log_var


def vae_loss(recon_x, x, mu, log_var, var=0.5):
    B = x.shape[0]
    mse = ((recon_x.reshape(B, -1) - x.reshape(B, -1)) ** 2).sum(dim=1)
    kl = (-1 + torch.exp(log_var) + mu ** 2 - log_var).sum(dim=1) / 2
    return (kl + mse / (2 * var)).mean()


class GenModel(nn.Module):
    def __init__(self, latent_dim=10, hidden_dim=256):
        super().__init__()
        self.latent_dim = latent_dim
        self.encoder = nn.Sequential(
            nn.Linear(28 * 28 + 10, hidden_dim),
            nn.ReLU(),
            nn.Linear(hidden_dim, 2 * latent_dim),
        )
        self.decoder = nn.Sequential(
            nn.Linear(latent_dim + 10, hidden_dim),
            nn.ReLU(),
            nn.Linear(hidden_dim, 28 * 28),
            nn.Sigmoid(),
        )

    def reparameterize(self, mu, log_var):
        if not self.training:
            return mu
        return mu + torch.exp(log_var / 2) * torch.randn_like(mu)

    def forward(self, x, labels):
        x = x.reshape(x.shape[0], -1)
        y = F.one_hot(labels, num_classes=10).float()
        stats = self.encoder(torch.cat((x, y), dim=1))
        mu, log_var = stats[:, :self.latent_dim], stats[:, self.latent_dim:]
        z = self.reparameterize(mu, log_var)
        recon = self.decoder(torch.cat((z, y), dim=1))
        return recon, mu, log_var

    def decode(self, z, label):
        # label is one digit, as in the generation loop of the handout
        onehot = torch.zeros(1, 10)
        onehot[0, label] = 1
        onehot = onehot.expand(z.shape[0], 10)
        return self.decoder(torch.cat((z, onehot), 1))
