"""Style: textbook CVAE written as `class CVAE` with `GenModel = CVAE` at the bottom: the one-hot label is
concatenated to the flattened image at the encoder input and to z at the decoder input, nowhere else.
decode converts the label with torch.as_tensor, so int, 0-dim and [B] labels all work."""
import torch
import torch.nn as nn
import torch.nn.functional as F

IMG = 28 * 28
NCLASS = 10


class VAE(nn.Module):
    """Section 2: plain VAE."""

    def __init__(self, latent_dim=8, hidden_dim=200):
        super().__init__()
        self.latent_dim = latent_dim
        self.e1 = nn.Linear(IMG, hidden_dim)
        self.e2 = nn.Linear(hidden_dim, hidden_dim)
        self.e_mu = nn.Linear(hidden_dim, latent_dim)
        self.e_lv = nn.Linear(hidden_dim, latent_dim)
        self.d1 = nn.Linear(latent_dim, hidden_dim)
        self.d2 = nn.Linear(hidden_dim, hidden_dim)
        self.d3 = nn.Linear(hidden_dim, IMG)

    def encode(self, x):
        h = F.elu(self.e1(x))
        h = F.elu(self.e2(h))
        return self.e_mu(h), self.e_lv(h)

    def reparameterize(self, mu, log_var):
        if self.training:
            return mu + torch.exp(0.5 * log_var) * torch.randn_like(mu)
        return mu

    def decode(self, z, label=None):
        h = F.elu(self.d1(z))
        h = F.elu(self.d2(h))
        return torch.sigmoid(self.d3(h))

    def forward(self, x, label=None):
        x = x.reshape(-1, IMG)
        mu, log_var = self.encode(x)
        return self.decode(self.reparameterize(mu, log_var)), mu, log_var


def vae_loss(recon_x, x, mu, log_var, var=0.5):
    """-ELBO averaged over the batch."""
    diff = x.reshape(-1, IMG) - recon_x.reshape(-1, IMG)
    nll = (diff * diff).sum(-1) / (2 * var)
    kl = 0.5 * (-1.0 + log_var.exp() + mu * mu - log_var).sum(-1)
    return (nll + kl).mean()


class CVAE(nn.Module):
    """Section 3: conditional VAE, q(z|x,y) and p(x|z,y)."""

    def __init__(self, latent_dim=8, hidden_dim=200):
        super().__init__()
        self.latent_dim = latent_dim
        self.e1 = nn.Linear(IMG + NCLASS, hidden_dim)
        self.e2 = nn.Linear(hidden_dim, hidden_dim)
        self.e_mu = nn.Linear(hidden_dim, latent_dim)
        self.e_lv = nn.Linear(hidden_dim, latent_dim)
        self.d1 = nn.Linear(latent_dim + NCLASS, hidden_dim)
        self.d2 = nn.Linear(hidden_dim, hidden_dim)
        self.d3 = nn.Linear(hidden_dim, IMG)

    @staticmethod
    def onehot(label, n, device):
        label = torch.as_tensor(label, device=device).long().view(-1)
        if label.numel() == 1:
            label = label.expand(n)
        return F.one_hot(label, NCLASS).float()

    def encode(self, x, label):
        x = x.reshape(-1, IMG)
        h = F.elu(self.e1(torch.cat((x, self.onehot(label, x.size(0), x.device)), dim=-1)))
        h = F.elu(self.e2(h))
        return self.e_mu(h), self.e_lv(h)

    def reparameterize(self, mu, log_var):
        if self.training:
            return mu + torch.exp(0.5 * log_var) * torch.randn_like(mu)
        return mu

    def decode(self, z, label):
        h = F.elu(self.d1(torch.cat((z, self.onehot(label, z.size(0), z.device)), dim=-1)))
        h = F.elu(self.d2(h))
        return torch.sigmoid(self.d3(h))

    def forward(self, x, label):
        mu, log_var = self.encode(x, label)
        return self.decode(self.reparameterize(mu, log_var), label), mu, log_var


GenModel = CVAE
