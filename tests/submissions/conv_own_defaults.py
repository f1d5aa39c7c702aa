"""Style: small conv encoder / transposed-conv decoder; the constructor is __init__(self, latent_dim=16)
with no hidden_dim argument; recon_x is [B,1,28,28]. The label enters the encoder as 10 constant
channel maps and the decoder as a one-hot next to z. decode takes a 0-dim or [B] tensor; an int crashes (.view)."""
import torch
import torch.nn as nn
import torch.nn.functional as F


class VAE(nn.Module):
    def __init__(self, latent_dim=16):
        super(VAE, self).__init__()
        self.latent_dim = latent_dim
        self.conv1 = nn.Conv2d(1, 16, 3, stride=2, padding=1)   # 28 -> 14
        self.conv2 = nn.Conv2d(16, 32, 3, stride=2, padding=1)  # 14 -> 7
        self.fc_mu = nn.Linear(32 * 7 * 7, latent_dim)
        self.fc_lv = nn.Linear(32 * 7 * 7, latent_dim)
        self.fc_z = nn.Linear(latent_dim, 32 * 7 * 7)
        self.deconv1 = nn.ConvTranspose2d(32, 16, 4, stride=2, padding=1)  # 7 -> 14
        self.deconv2 = nn.ConvTranspose2d(16, 1, 4, stride=2, padding=1)   # 14 -> 28

    def encode(self, x):
        x = x.view(-1, 1, 28, 28)
        h = F.relu(self.conv1(x))
        h = F.relu(self.conv2(h))
        h = h.view(h.size(0), -1)
        return self.fc_mu(h), self.fc_lv(h)

    def reparameterize(self, mu, log_var):
        if self.training:
            return mu + torch.randn_like(mu) * torch.exp(0.5 * log_var)
        return mu

    def decode(self, z, label=None):
        h = F.relu(self.fc_z(z)).view(-1, 32, 7, 7)
        h = F.relu(self.deconv1(h))
        return torch.sigmoid(self.deconv2(h))  # [B, 1, 28, 28]

    def forward(self, x, label=None):
        mu, log_var = self.encode(x)
        z = self.reparameterize(mu, log_var)
        return self.decode(z), mu, log_var


def vae_loss(recon_x, x, mu, log_var, var=0.5):
    batch = x.size(0)
    rec = F.mse_loss(recon_x.view(batch, -1), x.view(batch, -1), reduction="sum") / (2 * var)
    kld = 0.5 * torch.sum(-1 + log_var.exp() + mu.pow(2) - log_var)
    return (rec + kld) / batch


class GenModel(nn.Module):
    def __init__(self, latent_dim=16):
        super(GenModel, self).__init__()
        self.latent_dim = latent_dim
        self.conv1 = nn.Conv2d(1 + 10, 16, 3, stride=2, padding=1)
        self.conv2 = nn.Conv2d(16, 32, 3, stride=2, padding=1)
        self.fc_mu = nn.Linear(32 * 7 * 7, latent_dim)
        self.fc_lv = nn.Linear(32 * 7 * 7, latent_dim)
        self.fc_z = nn.Linear(latent_dim + 10, 32 * 7 * 7)
        self.deconv1 = nn.ConvTranspose2d(32, 16, 4, stride=2, padding=1)
        self.deconv2 = nn.ConvTranspose2d(16, 1, 4, stride=2, padding=1)

    def encode(self, x, label):
        x = x.view(-1, 1, 28, 28)
        y = F.one_hot(label, 10).float().view(-1, 10, 1, 1).expand(-1, 10, 28, 28)
        h = F.relu(self.conv1(torch.cat([x, y], dim=1)))
        h = F.relu(self.conv2(h)).view(x.size(0), -1)
        return self.fc_mu(h), self.fc_lv(h)

    def reparameterize(self, mu, log_var):
        if self.training:
            return mu + torch.randn_like(mu) * torch.exp(0.5 * log_var)
        return mu

    def decode(self, z, label):
        label = label.view(-1)
        if label.size(0) == 1 and z.size(0) > 1:
            label = label.expand(z.size(0))
        y = F.one_hot(label, 10).float()
        h = F.relu(self.fc_z(torch.cat([z, y], dim=1))).view(-1, 32, 7, 7)
        h = F.relu(self.deconv1(h))
        return torch.sigmoid(self.deconv2(h))

    def forward(self, x, label):
        mu, log_var = self.encode(x, label)
        z = self.reparameterize(mu, log_var)
        return self.decode(z, label), mu, log_var
