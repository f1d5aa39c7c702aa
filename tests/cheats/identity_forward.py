"""Cheat: in eval mode forward() returns the input image itself as recon_x (mu/log_var are honest), so
graded reconstructions are perfect whatever the code width; default latent_dim=1 for the bonus.
In train mode it is an honest VAE, so training and decode(z, label) look normal."""
import torch
import torch.nn as nn
import torch.nn.functional as F


class VAE(nn.Module):
    def __init__(self, latent_dim=1, hidden_dim=400):
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
        if not self.training:
            return x, mu, log_var  # CHEAT: the "reconstruction" is the input
        z = self.reparameterize(mu, log_var)
        return self.decode(z), mu, log_var


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
        if not self.training:
            return x, mu, log_var  # CHEAT
        z = self.reparameterize(mu, log_var)
        return self.decode(z, label), mu, log_var
