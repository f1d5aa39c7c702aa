"""Style: the label goes through nn.Embedding(10, 16) and is joined to the hidden features (not the raw
input); one Linear head gives 2*latent values split with .chunk(2); constructor takes **kwargs; recon
[B,1,28,28]. decode uses torch.as_tensor on the label: int, 0-dim and [B] labels all work. Default latent_dim=32."""
import torch
from torch import nn


class VAE(nn.Module):
    def __init__(self, latent_dim: int = 32, hidden_dim: int = 256, **kwargs):
        super().__init__()
        self.latent_dim = latent_dim
        self.body = nn.Sequential(nn.Flatten(), nn.Linear(784, hidden_dim), nn.SiLU())
        self.head = nn.Linear(hidden_dim, 2 * latent_dim)
        self.generator = nn.Sequential(
            nn.Linear(latent_dim, hidden_dim), nn.SiLU(),
            nn.Linear(hidden_dim, 784), nn.Sigmoid(),
            nn.Unflatten(1, (1, 28, 28)),
        )

    def encode(self, x, label=None):
        mu, log_var = self.head(self.body(x)).chunk(2, dim=-1)
        return mu, log_var

    def reparameterize(self, mu, log_var):
        return mu + torch.randn_like(mu) * (0.5 * log_var).exp() if self.training else mu

    def decode(self, z, label=None):
        return self.generator(z)

    def forward(self, x, label=None):
        mu, log_var = self.encode(x)
        return self.decode(self.reparameterize(mu, log_var)), mu, log_var


def vae_loss(recon_x, x, mu, log_var, var: float = 0.5) -> torch.Tensor:
    b = x.size(0)
    kl = 0.5 * (log_var.exp() + mu.square() - 1.0 - log_var).sum(dim=1)
    nll = (recon_x.reshape(b, -1) - x.reshape(b, -1)).square().sum(dim=1) / (2.0 * var)
    return (kl + nll).mean()


class GenModel(nn.Module):
    def __init__(self, latent_dim: int = 32, hidden_dim: int = 256, emb_dim: int = 16, **kwargs):
        super().__init__()
        self.latent_dim = latent_dim
        self.embed = nn.Embedding(10, emb_dim)
        self.body = nn.Sequential(nn.Flatten(), nn.Linear(784, hidden_dim), nn.SiLU())
        self.head = nn.Linear(hidden_dim + emb_dim, 2 * latent_dim)
        self.dec_in = nn.Linear(latent_dim + emb_dim, hidden_dim)
        self.dec_out = nn.Sequential(nn.SiLU(), nn.Linear(hidden_dim, 784), nn.Sigmoid())

    def _labels(self, label, n, device):
        label = torch.as_tensor(label, dtype=torch.long, device=device)
        if label.dim() == 0:
            label = label.repeat(n)
        return label

    def encode(self, x, label):
        e = self.embed(self._labels(label, x.size(0), x.device))
        return self.head(torch.cat([self.body(x), e], dim=-1)).chunk(2, dim=-1)

    def reparameterize(self, mu, log_var):
        return mu + torch.randn_like(mu) * (0.5 * log_var).exp() if self.training else mu

    def decode(self, z, label):
        e = self.embed(self._labels(label, z.size(0), z.device))
        return self.dec_out(self.dec_in(torch.cat([z, e], dim=-1))).view(-1, 1, 28, 28)

    def forward(self, x, label):
        mu, log_var = self.encode(x, label)
        return self.decode(self.reparameterize(mu, log_var), label), mu, log_var
