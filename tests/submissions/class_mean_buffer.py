"""Style: GenModel keeps each digit's mean code in buffers (sums and counts added up with index_add_ while
training) and decode shifts z by the digit's mean code. Written and tested in fp32: under bf16 autocast the
encoder's codes come out in bf16 and index_add_ refuses to add them into the fp32 sums, so this file is the
corpus's proof that a model that cannot take bf16 is trained in fp32, never failed. MLPs on flattened
images, recon [B,784], default latent_dim=16."""
import torch
import torch.nn as nn
import torch.nn.functional as F


class VAE(nn.Module):
    def __init__(self, latent_dim=16):
        super().__init__()
        self.fc1 = nn.Linear(784, 400)
        self.fc_mu = nn.Linear(400, latent_dim)
        self.fc_logvar = nn.Linear(400, latent_dim)
        self.fc3 = nn.Linear(latent_dim, 400)
        self.fc4 = nn.Linear(400, 784)

    def encode(self, x):
        h = F.relu(self.fc1(x.view(-1, 784)))
        return self.fc_mu(h), self.fc_logvar(h)

    def decode(self, z, label=None):
        return torch.sigmoid(self.fc4(F.relu(self.fc3(z))))

    def forward(self, x, label=None):
        mu, logvar = self.encode(x)
        std = torch.exp(0.5 * logvar)
        z = mu + std * torch.randn_like(std) if self.training else mu
        return self.decode(z), mu, logvar


def vae_loss(recon_x, x, mu, log_var, var=0.5):
    mse = ((recon_x.view(-1, 784) - x.view(-1, 784)) ** 2).sum() / (2 * var)
    kld = -0.5 * torch.sum(1 + log_var - mu.pow(2) - log_var.exp())
    return (mse + kld) / x.size(0)


class GenModel(nn.Module):
    def __init__(self, latent_dim=16):
        super().__init__()
        self.fc1 = nn.Linear(784 + 10, 400)
        self.fc_mu = nn.Linear(400, latent_dim)
        self.fc_logvar = nn.Linear(400, latent_dim)
        self.fc3 = nn.Linear(latent_dim + 10, 400)
        self.fc4 = nn.Linear(400, 784)
        self.register_buffer("code_sum", torch.zeros(10, latent_dim))
        self.register_buffer("code_count", torch.zeros(10))

    def decode(self, z, label):
        label = torch.as_tensor(label, device=z.device).long().view(-1).expand(z.size(0))
        centre = self.code_sum[label] / self.code_count[label].clamp(min=1).unsqueeze(1)
        h = torch.cat([z + centre, F.one_hot(label, 10).float()], dim=1)
        return torch.sigmoid(self.fc4(F.relu(self.fc3(h))))

    def forward(self, x, label):
        h = F.relu(self.fc1(torch.cat([x.view(-1, 784), F.one_hot(label, 10).float()], dim=1)))
        mu, logvar = self.fc_mu(h), self.fc_logvar(h)
        if self.training:
            self.code_count.index_add_(0, label, torch.ones_like(label, dtype=torch.float))
            self.code_sum.index_add_(0, label, mu.detach())
            z = mu + torch.exp(0.5 * logvar) * torch.randn_like(mu)
        else:
            z = mu
        centre = self.code_sum[label] / self.code_count[label].clamp(min=1).unsqueeze(1)
        h = torch.cat([z, F.one_hot(label, 10).float()], dim=1)
        return torch.sigmoid(self.fc4(F.relu(self.fc3(h)))), mu - centre, logvar
