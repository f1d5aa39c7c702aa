"""Plagiarism pair, disguised copy of copied_a.py: identifiers renamed, comments rewritten, whitespace
changed, classes/functions/methods reordered; same computation (decode: int/0-dim/[B]; latent 12)."""
import torch
import torch.nn as nn
import torch.nn.functional as F


def loss_function(x_hat,  target,  means,  logvars,  var = 0.5):
    n = target.size(0)

    # KL(q || p) with p = N(0, I)
    kld = 0.5*torch.sum(-1 + torch.exp(logvars) + means**2 - logvars, dim = 1)

    # Gaussian likelihood part
    rec = torch.sum((x_hat.view(n, -1) - target.view(n, -1))**2, dim = 1)/(2*var)

    return torch.mean(rec + kld)


vae_loss = loss_function


def label_vector(y,  n,  dev):
    y = torch.as_tensor(y, device = dev).long().view(-1)
    if y.numel() == 1 :
        y = y.repeat(n)
    return F.one_hot(y, num_classes = 10).float()


class GenModel(nn.Module):

    def forward(self, img, y):
        means, logvars = self.encode(img, y)
        code = self.reparameterize(means, logvars)
        return self.decode(code, y), means, logvars

    def decode(self, code, y):
        t = torch.cat([code, label_vector(y, code.size(0), code.device)], dim = 1)
        t = F.leaky_relu(self.g1(t), 0.2)
        t = F.leaky_relu(self.g2(t), 0.2)
        return torch.sigmoid(self.g_out(t))

    def reparameterize(self, means, logvars):
        if not self.training:
            return means
        sigma = torch.exp(0.5*logvars)
        return means + sigma*torch.randn_like(sigma)

    def encode(self, img, y):
        img = img.view(img.size(0), -1)
        t = F.leaky_relu(self.h(torch.cat([img, label_vector(y, img.size(0), img.device)], dim = 1)), 0.2)
        return self.to_mean(t), self.to_logvar(t)

    def __init__(self, latent_dim = 12, hidden_dim = 320):
        super().__init__()
        self.latent_dim = latent_dim
        # q(z | x, y)
        self.h = nn.Linear(784 + 10, hidden_dim)
        self.to_mean = nn.Linear(hidden_dim, latent_dim)
        self.to_logvar = nn.Linear(hidden_dim, latent_dim)
        # p(x | z, y)
        self.g1 = nn.Linear(latent_dim + 10, hidden_dim//2)
        self.g2 = nn.Linear(hidden_dim//2, hidden_dim)
        self.g_out = nn.Linear(hidden_dim, 784)


class VAE(nn.Module):

    def __init__(self, latent_dim = 12, hidden_dim = 320):
        super().__init__()
        self.latent_dim = latent_dim
        self.h = nn.Linear(784, hidden_dim)
        self.to_mean = nn.Linear(hidden_dim, latent_dim)
        self.to_logvar = nn.Linear(hidden_dim, latent_dim)
        self.g1 = nn.Linear(latent_dim, hidden_dim//2)
        self.g2 = nn.Linear(hidden_dim//2, hidden_dim)
        self.g_out = nn.Linear(hidden_dim, 784)

    def forward(self, img, y = None):
        means, logvars = self.encode(img)
        code = self.reparameterize(means, logvars)
        return self.decode(code), means, logvars

    def reparameterize(self, means, logvars):
        if not self.training:
            return means
        sigma = torch.exp(0.5*logvars)
        return means + sigma*torch.randn_like(sigma)

    def encode(self, img):
        t = F.leaky_relu(self.h(img.view(img.size(0), -1)), 0.2)
        return self.to_mean(t), self.to_logvar(t)

    def decode(self, code, y = None):
        t = F.leaky_relu(self.g1(code), 0.2)
        t = F.leaky_relu(self.g2(t), 0.2)
        return torch.sigmoid(self.g_out(t))
