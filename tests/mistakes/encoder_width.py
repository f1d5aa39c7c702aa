"""Mistake: the encoder's heads are 2 * latent_dim wide, the width of the single head that a
.chunk(2) would split into mu and log_var. forward returns mu and log_var [B, 48] for latent_dim 24,
and the decoder's first layer, 24 wide, fails on z: "mat1 and mat2 shapes cannot be multiplied
(8x48 and 24x256)". Otherwise the classic MLP of the handout's template; tests/test_contract.py also
varies it into the other widths a student gets wrong."""
import torch
import torch.nn as nn
import torch.nn.functional as F


class VAE(nn.Module):
    def __init__(self, latent_dim=24, hidden_dim=256):
        super().__init__()
        # 2.2.1
        self.fc1 = nn.Linear(784, 512)
        self.fc2 = nn.Linear(512, hidden_dim)
        self.fc_mu = nn.Linear(hidden_dim, 2 * latent_dim)
        self.fc_log_var = nn.Linear(hidden_dim, 2 * latent_dim)
        self.fc3 = nn.Linear(latent_dim, hidden_dim)
        self.fc4 = nn.Linear(hidden_dim, 512)
        self.fc5 = nn.Linear(512, 784)

    def encode(self, x):
        # 2.2.2
        h = F.relu(self.fc2(F.relu(self.fc1(x.view(-1, 784)))))
        return self.fc_mu(h), self.fc_log_var(h)

    def reparameterize(self, mu, log_var):
        # 2.2.4
        if self.training:
            return mu + torch.randn_like(mu) * torch.exp(0.5 * log_var)
        return mu

    def decode(self, z, labels=None):
        # 2.2.3
        h = F.relu(self.fc3(z))
        return torch.sigmoid(self.fc5(F.relu(self.fc4(h))))

    def forward(self, x, labels=None):
        mu, log_var = self.encode(x)
        z = self.reparameterize(mu, log_var)
        return self.decode(z), mu, log_var


class GenModel(VAE):
    """The same VAE with the label, one-hot, beside z at the decoder's input."""

    def __init__(self, latent_dim=24, hidden_dim=256):
        super().__init__(latent_dim, hidden_dim)
        self.fc3 = nn.Linear(latent_dim + 10, hidden_dim)

    def decode(self, z, labels):
        labels = torch.as_tensor(labels, device=z.device).reshape(-1).expand(len(z))
        h = F.relu(self.fc3(torch.cat([z, F.one_hot(labels, 10).float()], dim=1)))
        return torch.sigmoid(self.fc5(F.relu(self.fc4(h))))

    def forward(self, x, labels):
        mu, log_var = self.encode(x)
        z = self.reparameterize(mu, log_var)
        return self.decode(z, labels), mu, log_var


def vae_loss(recon_x, x, mu, log_var, var=0.5):
    # 2.3
    reconstruction = ((x.view(len(x), -1) - recon_x.view(len(x), -1)) ** 2).sum(1) / (2 * var)
    kl = -0.5 * (1 + log_var - mu ** 2 - log_var.exp()).sum(1)
    return (reconstruction + kl).mean()
