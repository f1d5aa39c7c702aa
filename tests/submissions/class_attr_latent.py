"""Style: latent_dim and layer sizes kept as class attributes (latent_dim = 2), overridden per instance
when latent_dim is passed; two hidden layers with BatchNorm1d (so forward/decode with a batch of 1 need
eval mode). GenModel.decode flattens the label with torch.as_tensor: int, 0-dim and [B] labels all work."""
import torch
import torch.nn as nn
import torch.nn.functional as F


class VAE(nn.Module):
    latent_dim = 2
    hidden_sizes = (256, 128)
    input_size = 28 * 28

    def __init__(self, latent_dim=None):
        super().__init__()
        if latent_dim is not None:
            self.latent_dim = latent_dim
        h1, h2 = self.hidden_sizes
        self.encoder = nn.Sequential(
            nn.Linear(self.input_size, h1), nn.BatchNorm1d(h1), nn.ReLU(),
            nn.Linear(h1, h2), nn.BatchNorm1d(h2), nn.ReLU(),
        )
        self.to_mu = nn.Linear(h2, self.latent_dim)
        self.to_logvar = nn.Linear(h2, self.latent_dim)
        self.decoder = nn.Sequential(
            nn.Linear(self.latent_dim, h2), nn.BatchNorm1d(h2), nn.ReLU(),
            nn.Linear(h2, h1), nn.BatchNorm1d(h1), nn.ReLU(),
            nn.Linear(h1, self.input_size), nn.Sigmoid(),
        )

    def encode(self, x):
        h = self.encoder(x.view(-1, self.input_size))
        return self.to_mu(h), self.to_logvar(h)

    def reparameterize(self, mu, logvar):
        if not self.training:
            return mu
        return mu + torch.randn_like(mu) * torch.exp(0.5 * logvar)

    def decode(self, z, label=None):
        return self.decoder(z.view(-1, self.latent_dim))

    def forward(self, x, label=None):
        mu, logvar = self.encode(x)
        z = self.reparameterize(mu, logvar)
        return self.decode(z), mu, logvar


def vae_loss(recon_x, x, mu, log_var, var=0.5):
    batch_size = x.size(0)
    squared_error = torch.sum((recon_x.view(batch_size, -1) - x.view(batch_size, -1)) ** 2)
    kl_divergence = 0.5 * torch.sum(-1 - log_var + mu ** 2 + log_var.exp())
    return (squared_error / (2 * var) + kl_divergence) / batch_size


class GenModel(VAE):
    num_classes = 10

    def __init__(self, latent_dim=None):
        super().__init__(latent_dim)
        h1, h2 = self.hidden_sizes
        # replace the first layers so that they also take the one-hot label
        self.encoder[0] = nn.Linear(self.input_size + self.num_classes, h1)
        self.decoder[0] = nn.Linear(self.latent_dim + self.num_classes, h2)

    def one_hot(self, labels, n):
        labels = torch.as_tensor(labels).long().flatten()
        if labels.numel() == 1:
            labels = labels.repeat(n)
        return F.one_hot(labels, self.num_classes).float()

    def encode(self, x, labels):
        x = x.view(-1, self.input_size)
        h = self.encoder(torch.cat([x, self.one_hot(labels, x.size(0))], 1))
        return self.to_mu(h), self.to_logvar(h)

    def decode(self, z, labels):
        z = z.view(-1, self.latent_dim)
        return self.decoder(torch.cat([z, self.one_hot(labels, z.size(0))], 1))

    def forward(self, x, labels):
        mu, logvar = self.encode(x, labels)
        z = self.reparameterize(mu, logvar)
        return self.decode(z, labels), mu, logvar
