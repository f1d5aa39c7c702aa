"""Style: the classic PyTorch-examples MLP (fc1/fc21/fc22/fc3/fc4). forward flattens with
x.view(-1, 784); encode() expects [B,784]; decode() returns [B,784].
GenModel.decode accepts a 0-dim or a [B] label tensor; a Python int crashes (F.one_hot needs a tensor)."""
import torch
import torch.nn as nn
import torch.nn.functional as F


class VAE(nn.Module):
    def __init__(self, latent_dim=20, hidden_dim=400):
        super(VAE, self).__init__()
        # 2.2.1
        self.fc1 = nn.Linear(784, hidden_dim)
        self.fc21 = nn.Linear(hidden_dim, latent_dim)  # mu
        self.fc22 = nn.Linear(hidden_dim, latent_dim)  # logvar
        self.fc3 = nn.Linear(latent_dim, hidden_dim)
        self.fc4 = nn.Linear(hidden_dim, 784)

    def encode(self, x):
        # 2.2.2  x is [B, 784]
        h1 = F.relu(self.fc1(x))
        return self.fc21(h1), self.fc22(h1)

    def reparameterize(self, mu, logvar):
        # 2.2.4
        if self.training:
            std = torch.exp(0.5 * logvar)
            eps = torch.randn_like(std)
            return mu + eps * std
        else:
            return mu

    def decode(self, z, label=None):
        # 2.2.3
        h3 = F.relu(self.fc3(z))
        return torch.sigmoid(self.fc4(h3))

    def forward(self, x, label=None):
        mu, logvar = self.encode(x.view(-1, 784))
        z = self.reparameterize(mu, logvar)
        return self.decode(z), mu, logvar


def vae_loss(recon_x, x, mu, log_var, var=0.5):
    # 2.3  negative ELBO, mean over the batch
    rec = torch.sum((x.view(-1, 784) - recon_x.view(-1, 784)) ** 2, dim=1) / (2 * var)
    kld = 0.5 * torch.sum(-1 + log_var.exp() + mu.pow(2) - log_var, dim=1)
    return torch.mean(rec + kld)


class GenModel(nn.Module):
    def __init__(self, latent_dim=20, hidden_dim=400, n_classes=10):
        super(GenModel, self).__init__()
        self.n_classes = n_classes
        self.fc1 = nn.Linear(784 + n_classes, hidden_dim)
        self.fc21 = nn.Linear(hidden_dim, latent_dim)
        self.fc22 = nn.Linear(hidden_dim, latent_dim)
        self.fc3 = nn.Linear(latent_dim + n_classes, hidden_dim)
        self.fc4 = nn.Linear(hidden_dim, 784)

    def encode(self, x, c):
        # x: [B, 784], c: one-hot [B, 10]
        h1 = F.relu(self.fc1(torch.cat([x, c], 1)))
        return self.fc21(h1), self.fc22(h1)

    def reparameterize(self, mu, logvar):
        if self.training:
            std = torch.exp(0.5 * logvar)
            return mu + torch.randn_like(std) * std
        return mu

    def decode(self, z, label):
        c = F.one_hot(label, self.n_classes).float()
        if c.dim() == 1:  # one label for every z
            c = c.unsqueeze(0).expand(z.size(0), -1)
        h3 = F.relu(self.fc3(torch.cat([z, c], 1)))
        return torch.sigmoid(self.fc4(h3))

    def forward(self, x, label):
        x = x.view(-1, 784)
        c = F.one_hot(label, self.n_classes).float()
        mu, logvar = self.encode(x, c)
        z = self.reparameterize(mu, logvar)
        h3 = F.relu(self.fc3(torch.cat([z, c], 1)))
        return torch.sigmoid(self.fc4(h3)), mu, logvar
