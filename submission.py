"""The student's part of the lab: a VAE, its loss, and a label-conditional generator.

What the lab's scripts call (the handout's contract, defined in contract.py):
    model = VAE(latent_dim=8)                    # or GenModel(latent_dim=8)
    recon_x, mu, log_var = model(x, labels)      # x: [B,1,28,28] in [0,1], labels [B]
    images = model.decode(z, label)              # z [1, latent_dim] or [B, latent_dim]
    loss = vae_loss(recon_x, x, mu, log_var, var)
Nothing else: this file reaches its grades in any training loop that calls only these.

In train mode the code is sampled with the reparameterisation trick; in eval mode the
posterior mean is used, so a reconstruction is deterministic and equals decode(mu, label).

The parts a student writes are marked with the handout's section numbers: 2.2.1 layers,
2.2.2 encoder, 2.2.3 decoder, 2.2.4 forward and reparameterisation, 2.3 the loss, 3 GenModel.
"""
import torch
from torch import nn
from torch.nn import functional as F

NUM_CLASSES = 10


def as_label_batch(labels, batch_size: int, device) -> torch.Tensor:
    """Labels given as a Python int, a 0-dim tensor or a [B] tensor -> int64 tensor [B]."""
    labels = torch.as_tensor(labels, device=device).long().reshape(-1)
    if labels.numel() == 1:
        labels = labels.expand(batch_size)
    if labels.shape != (batch_size,):
        raise ValueError(f"expected {batch_size} labels (or one), got shape {list(labels.shape)}")
    return labels


class ConvEncoder(nn.Module):
    """[B,1,28,28] (+ optional extra features) -> (mu, log_var), each [B, latent_dim]."""

    def __init__(self, latent_dim: int, extra_features: int = 0, width: int = 32, hidden: int = 256):
        super().__init__()
        # BEGIN SOLUTION 2.2.1
        self.conv = nn.Sequential(
            nn.Conv2d(1, width, 4, stride=2, padding=1), nn.LeakyReLU(0.2),              # 28 -> 14
            nn.Conv2d(width, 2 * width, 4, stride=2, padding=1), nn.LeakyReLU(0.2),      # 14 -> 7
        )
        self.fc = nn.Sequential(nn.Linear(2 * width * 7 * 7 + extra_features, hidden), nn.LeakyReLU(0.2))
        # One head for mu and log_var: log_var is unconstrained, unlike a variance.
        self.head = nn.Linear(hidden, 2 * latent_dim)
        # END SOLUTION

    def forward(self, x, extra=None):
        # BEGIN SOLUTION 2.2.2
        h = self.conv(x.reshape(-1, 1, 28, 28)).flatten(1)
        if extra is not None:
            h = torch.cat([h, extra], dim=1)
        mu, log_var = self.head(self.fc(h)).chunk(2, dim=1)
        # exp(log_var) overflows float32 past ~88; clamping keeps a diverging run finite
        # long enough for the trainer to report it.
        return mu, log_var.clamp(-30.0, 20.0)
        # END SOLUTION


class ConvDecoder(nn.Module):
    """[B, latent_dim (+ extra)] -> image means [B,28,28] in [0,1]."""

    def __init__(self, latent_dim: int, extra_features: int = 0, width: int = 32, hidden: int = 256):
        super().__init__()
        # BEGIN SOLUTION 2.2.1
        self.width = width
        self.fc = nn.Sequential(
            nn.Linear(latent_dim + extra_features, hidden), nn.LeakyReLU(0.2),
            nn.Linear(hidden, 2 * width * 7 * 7), nn.LeakyReLU(0.2),
        )
        self.deconv = nn.Sequential(
            nn.ConvTranspose2d(2 * width, width, 4, stride=2, padding=1), nn.LeakyReLU(0.2),  # 7 -> 14
            nn.ConvTranspose2d(width, 1, 4, stride=2, padding=1),                               # 14 -> 28
        )
        # END SOLUTION

    def forward(self, z, extra=None):
        # BEGIN SOLUTION 2.2.3
        if extra is not None:
            z = torch.cat([z, extra], dim=1)
        h = self.fc(z).reshape(-1, 2 * self.width, 7, 7)
        # A sigmoid keeps every pixel in [0, 1], the range of the data.
        return torch.sigmoid(self.deconv(h)).reshape(-1, 28, 28)
        # END SOLUTION


class VAE(nn.Module):
    """The label-free VAE of section 2 (task VAE0label): labels are accepted and ignored."""

    def __init__(self, latent_dim: int = 8, width: int = 32, hidden: int = 256):
        super().__init__()
        self.latent_dim = latent_dim
        self.encoder = ConvEncoder(latent_dim, width=width, hidden=hidden)
        self.decoder = ConvDecoder(latent_dim, width=width, hidden=hidden)

    def encode(self, x, labels=None):
        return self.encoder(x)

    def reparameterize(self, mu, log_var):
        # BEGIN SOLUTION 2.2.4
        if not self.training:
            return mu  # reconstruct from the posterior mean: no sampling noise at test time
        # z = mu + sigma * eps with eps ~ N(0, I): the randomness sits in eps, so gradients
        # flow through mu and sigma = exp(log_var / 2) to the encoder.
        eps = torch.randn_like(mu)
        return mu + eps * torch.exp(0.5 * log_var)
        # END SOLUTION

    def decode(self, z, labels=None):
        return self.decoder(z)

    def forward(self, x, labels=None):
        # BEGIN SOLUTION 2.2.4
        mu, log_var = self.encode(x)
        z = self.reparameterize(mu, log_var)
        return self.decoder(z), mu, log_var
        # END SOLUTION


def vae_loss(recon_x, x, mu, log_var, var=0.5):
    """Negative ELBO per image (up to a constant), averaged over the batch.

    KL(N(mu, sigma^2) || N(0, I)) = sum_i 1/2 (-1 + sigma_i^2 + mu_i^2 - log sigma_i^2)
    -log N(x; recon_x, var I)     = ||x - recon_x||^2 / (2 var) + const
    """
    # BEGIN SOLUTION 2.3
    batch_size = x.shape[0]
    # Flatten both: [B,1,28,28] - [B,28,28] would broadcast silently to [B,B,28,28].
    x = x.reshape(batch_size, -1)
    recon_x = recon_x.reshape(batch_size, -1)
    kl = 0.5 * (-1 + log_var.exp() + mu.pow(2) - log_var).sum(dim=1)
    reconstruction = (x - recon_x).pow(2).sum(dim=1) / (2 * var)
    return (kl + reconstruction).mean()
    # END SOLUTION


class GenModel(nn.Module):
    """Section 3: a conditional VAE. Encoder and decoder both see the label (one-hot), so
    the code only has to carry the style of the digit, and decode(z, 5) draws a 5.

    decode(z ~ N(0, I), label) draws good digits only where the decoder was trained, that is
    if the codes of real digits spread like N(0, I). The KL term alone leaves them narrower
    (its mu^2 part pulls every code in), so N(0, I) draws land partly outside and decode to
    smudges. So the posterior means are standardised over the data, as BatchNorm does: batch
    statistics while training, their running averages afterwards. Every code dimension then
    has spread 1 (the KL's mu^2 part is constant and only shapes sigma), the statistics are
    kept by forward itself, so any training loop gets them, and decode(mu, label) is still
    exactly the model's own reconstruction."""

    def __init__(self, latent_dim: int = 8, width: int = 32, hidden: int = 256):
        super().__init__()
        # BEGIN SOLUTION 3
        self.latent_dim = latent_dim
        self.encoder = ConvEncoder(latent_dim, extra_features=NUM_CLASSES, width=width, hidden=hidden)
        self.decoder = ConvDecoder(latent_dim, extra_features=NUM_CLASSES, width=width, hidden=hidden)
        self.code_norm = nn.BatchNorm1d(latent_dim, affine=False)
        # END SOLUTION

    def one_hot(self, labels, batch_size, device):
        return F.one_hot(as_label_batch(labels, batch_size, device), NUM_CLASSES).float()

    def encode(self, x, labels):
        # BEGIN SOLUTION 3
        mu, log_var = self.encoder(x, self.one_hot(labels, x.shape[0], x.device))
        if self.training and len(mu) == 1:  # batch statistics need two codes or more
            mu = F.batch_norm(mu, self.code_norm.running_mean, self.code_norm.running_var)
        else:
            mu = self.code_norm(mu)
        return mu, log_var
        # END SOLUTION

    def reparameterize(self, mu, log_var):
        # BEGIN SOLUTION 3
        if not self.training:
            return mu
        return mu + torch.randn_like(mu) * torch.exp(0.5 * log_var)
        # END SOLUTION

    def decode(self, z, labels):
        """Digits of class `labels` (an int, a 0-dim tensor or one label per row of z) from codes z."""
        # BEGIN SOLUTION 3
        return self.decoder(z, self.one_hot(labels, len(z), z.device))
        # END SOLUTION

    def forward(self, x, labels):
        # BEGIN SOLUTION 3
        mu, log_var = self.encode(x, labels)
        z = self.reparameterize(mu, log_var)
        return self.decode(z, labels), mu, log_var
        # END SOLUTION
