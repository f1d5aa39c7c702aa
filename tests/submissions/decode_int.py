"""Style: separate Encoder / Decoder sub-modules, one-hot built with scatter_. GenModel.decode was written
for a Python int label: torch.full((z.size(0),), label). It also happens to work with a 0-dim tensor
(torch.full accepts it), but a [B] label tensor crashes (TypeError: fill_value must be Number)."""
import torch
import torch.nn as nn

N_CLASSES = 10


def to_onehot(labels, n=N_CLASSES):
    out = torch.zeros(labels.size(0), n, device=labels.device)
    out.scatter_(1, labels.view(-1, 1), 1.0)
    return out


class Encoder(nn.Module):
    def __init__(self, in_dim, hidden_dim, latent_dim):
        super().__init__()
        self.hidden = nn.Linear(in_dim, hidden_dim)
        self.act = nn.LeakyReLU(0.2)
        self.mean = nn.Linear(hidden_dim, latent_dim)
        self.logvar = nn.Linear(hidden_dim, latent_dim)

    def forward(self, x):
        h = self.act(self.hidden(x))
        return self.mean(h), self.logvar(h)


class Decoder(nn.Module):
    def __init__(self, latent_dim, hidden_dim, out_dim=784):
        super().__init__()
        self.hidden = nn.Linear(latent_dim, hidden_dim)
        self.act = nn.LeakyReLU(0.2)
        self.out = nn.Linear(hidden_dim, out_dim)

    def forward(self, z):
        return torch.sigmoid(self.out(self.act(self.hidden(z))))


class VAE(nn.Module):
    def __init__(self, latent_dim=8, hidden_dim=300):
        super().__init__()
        self.encoder = Encoder(784, hidden_dim, latent_dim)
        self.decoder = Decoder(latent_dim, hidden_dim)

    def reparameterize(self, mu, log_var):
        if self.training:
            sigma = torch.exp(0.5 * log_var)
            return mu + sigma * torch.randn_like(sigma)
        return mu

    def decode(self, z, label=None):
        return self.decoder(z).view(-1, 1, 28, 28)

    def forward(self, x, label=None):
        mu, log_var = self.encoder(x.view(x.size(0), -1))
        z = self.reparameterize(mu, log_var)
        return self.decode(z), mu, log_var


def vae_loss(recon_x, x, mu, log_var, var=0.5):
    n = x.size(0)
    sq_err = (x.view(n, -1) - recon_x.view(n, -1)).pow(2).sum(1)
    kl = 0.5 * (log_var.exp() + mu.pow(2) - 1 - log_var).sum(1)
    return (kl + sq_err / (2 * var)).sum() / n


class GenModel(nn.Module):
    def __init__(self, latent_dim=8, hidden_dim=300):
        super().__init__()
        self.encoder = Encoder(784 + N_CLASSES, hidden_dim, latent_dim)
        self.decoder = Decoder(latent_dim + N_CLASSES, hidden_dim)

    def reparameterize(self, mu, log_var):
        if self.training:
            sigma = torch.exp(0.5 * log_var)
            return mu + sigma * torch.randn_like(sigma)
        return mu

    def decode(self, z, label):
        # label: the digit we want, e.g. 7
        labels = torch.full((z.size(0),), label, dtype=torch.long, device=z.device)
        return self.decoder(torch.cat([z, to_onehot(labels)], dim=1)).view(-1, 1, 28, 28)

    def forward(self, x, label):
        y = to_onehot(label)
        mu, log_var = self.encoder(torch.cat([x.view(x.size(0), -1), y], dim=1))
        z = self.reparameterize(mu, log_var)
        recon = self.decoder(torch.cat([z, y], dim=1)).view(-1, 1, 28, 28)
        return recon, mu, log_var
