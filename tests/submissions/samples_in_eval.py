"""Style: reparameterize() always samples (no self.training check), so forward() and reconstructions
are random even in eval mode. Otherwise a standard one-hot CVAE with two hidden layers.
GenModel.decode accepts an int, a 0-dim tensor or a [B] tensor."""
import torch
import torch.nn as nn
import torch.nn.functional as F


class VAE(nn.Module):
    def __init__(self, latent_dim=8, hidden_dim=256):
        super().__init__()
        self.enc1 = nn.Linear(784, hidden_dim)
        self.enc2 = nn.Linear(hidden_dim, hidden_dim // 2)
        self.z_mean = nn.Linear(hidden_dim // 2, latent_dim)
        self.z_log_var = nn.Linear(hidden_dim // 2, latent_dim)
        self.dec1 = nn.Linear(latent_dim, hidden_dim // 2)
        self.dec2 = nn.Linear(hidden_dim // 2, hidden_dim)
        self.dec3 = nn.Linear(hidden_dim, 784)

    def encode(self, x):
        h = F.relu(self.enc1(x.reshape(-1, 784)))
        h = F.relu(self.enc2(h))
        return self.z_mean(h), self.z_log_var(h)

    def reparameterize(self, mu, log_var):
        # sampling layer: z = mu + sigma * epsilon
        epsilon = torch.randn_like(mu)
        return mu + torch.exp(0.5 * log_var) * epsilon

    def decode(self, z, label=None):
        h = F.relu(self.dec1(z))
        h = F.relu(self.dec2(h))
        return torch.sigmoid(self.dec3(h))

    def forward(self, x, label=None):
        mu, log_var = self.encode(x)
        z = self.reparameterize(mu, log_var)
        return self.decode(z), mu, log_var


def vae_loss(recon_x, x, mu, log_var, var=0.5):
    x = x.reshape(-1, 784)
    recon_x = recon_x.reshape(-1, 784)
    reconstruction_loss = torch.sum(torch.square(x - recon_x), dim=-1) / (2.0 * var)
    kl_loss = -0.5 * torch.sum(1 + log_var - torch.square(mu) - torch.exp(log_var), dim=-1)
    return torch.mean(reconstruction_loss + kl_loss)


class GenModel(nn.Module):
    def __init__(self, latent_dim=8, hidden_dim=256, num_classes=10):
        super().__init__()
        self.num_classes = num_classes
        self.enc1 = nn.Linear(784 + num_classes, hidden_dim)
        self.enc2 = nn.Linear(hidden_dim, hidden_dim // 2)
        self.z_mean = nn.Linear(hidden_dim // 2, latent_dim)
        self.z_log_var = nn.Linear(hidden_dim // 2, latent_dim)
        self.dec1 = nn.Linear(latent_dim + num_classes, hidden_dim // 2)
        self.dec2 = nn.Linear(hidden_dim // 2, hidden_dim)
        self.dec3 = nn.Linear(hidden_dim, 784)

    def _onehot(self, label, n):
        if not torch.is_tensor(label):
            label = torch.tensor(label)
        label = label.reshape(-1).expand(n) if label.numel() == 1 else label
        return F.one_hot(label.long(), self.num_classes).float()

    def encode(self, x, label):
        x = x.reshape(-1, 784)
        h = F.relu(self.enc1(torch.cat([x, self._onehot(label, x.shape[0])], -1)))
        h = F.relu(self.enc2(h))
        return self.z_mean(h), self.z_log_var(h)

    def reparameterize(self, mu, log_var):
        epsilon = torch.randn_like(mu)
        return mu + torch.exp(0.5 * log_var) * epsilon

    def decode(self, z, label):
        h = F.relu(self.dec1(torch.cat([z, self._onehot(label, z.shape[0])], -1)))
        h = F.relu(self.dec2(h))
        return torch.sigmoid(self.dec3(h))

    def forward(self, x, label):
        mu, log_var = self.encode(x, label)
        z = self.reparameterize(mu, log_var)
        return self.decode(z, label), mu, log_var
