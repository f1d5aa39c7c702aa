"""Style: vae_loss uses binary cross-entropy summed over pixels (ignores `var`) plus the KL term,
divided by the batch size. MLP with fc_mu / fc_logvar. GenModel conditions only the decoder on the
label (the encoder never sees it). decode takes a 0-dim or [B] tensor; an int crashes (.dim())."""
import torch
from torch import nn
from torch.nn import functional as F


class VAE(nn.Module):
    def __init__(self, latent_dim=8, hidden_dim=400):
        super().__init__()
        self.fc1 = nn.Linear(784, hidden_dim)
        self.fc_mu = nn.Linear(hidden_dim, latent_dim)
        self.fc_logvar = nn.Linear(hidden_dim, latent_dim)
        self.fc2 = nn.Linear(latent_dim, hidden_dim)
        self.fc3 = nn.Linear(hidden_dim, 784)

    def encode(self, x):
        h = torch.tanh(self.fc1(x.view(x.size(0), -1)))
        return self.fc_mu(h), self.fc_logvar(h)

    def reparameterize(self, mu, logvar):
        if not self.training:
            return mu
        std = logvar.mul(0.5).exp_()
        eps = torch.randn_like(std)
        return eps.mul(std).add_(mu)

    def decode(self, z, labels=None):
        return torch.sigmoid(self.fc3(torch.tanh(self.fc2(z))))

    def forward(self, x, labels=None):
        mu, logvar = self.encode(x)
        return self.decode(self.reparameterize(mu, logvar)), mu, logvar


def vae_loss(recon_x, x, mu, log_var, var=0.5):
    # BCE works better than MSE for MNIST (pixels are almost binary), so var is not used.
    BCE = F.binary_cross_entropy(recon_x.view(-1, 784), x.view(-1, 784), reduction='sum')
    KLD = -0.5 * torch.sum(1 + log_var - mu.pow(2) - log_var.exp())
    return (BCE + KLD) / x.size(0)


class GenModel(nn.Module):
    def __init__(self, latent_dim=8, hidden_dim=400):
        super().__init__()
        self.fc1 = nn.Linear(784, hidden_dim)
        self.fc_mu = nn.Linear(hidden_dim, latent_dim)
        self.fc_logvar = nn.Linear(hidden_dim, latent_dim)
        self.fc2 = nn.Linear(latent_dim + 10, hidden_dim)
        self.fc3 = nn.Linear(hidden_dim, 784)

    def encode(self, x, labels=None):
        h = torch.tanh(self.fc1(x.view(x.size(0), -1)))
        return self.fc_mu(h), self.fc_logvar(h)

    def reparameterize(self, mu, logvar):
        if not self.training:
            return mu
        std = logvar.mul(0.5).exp_()
        return torch.randn_like(std).mul(std).add_(mu)

    def decode(self, z, labels):
        if labels.dim() == 0:
            labels = labels.expand(z.size(0))
        y = F.one_hot(labels, 10).float()
        return torch.sigmoid(self.fc3(torch.tanh(self.fc2(torch.cat([z, y], 1)))))

    def forward(self, x, labels):
        mu, logvar = self.encode(x)
        z = self.reparameterize(mu, logvar)
        return self.decode(z, labels), mu, logvar
