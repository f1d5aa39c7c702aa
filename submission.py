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
        # Convolutions run about a third faster on a CPU with channels-last weights and inputs
        # (the same numbers, laid out pixel by pixel); flatten(1) below copies where a view cannot.
        self.conv.to(memory_format=torch.channels_last)
        # END SOLUTION

    def forward(self, x, extra=None):
        # BEGIN SOLUTION 2.2.2
        h = self.conv(x.reshape(-1, 1, 28, 28).contiguous(memory_format=torch.channels_last)).flatten(1)
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
        self.deconv.to(memory_format=torch.channels_last)  # as in the encoder: faster on a CPU
        # END SOLUTION

    def forward(self, z, extra=None):
        # BEGIN SOLUTION 2.2.3
        if extra is not None:
            z = torch.cat([z, extra], dim=1)
        h = self.fc(z).reshape(-1, 2 * self.width, 7, 7).contiguous(memory_format=torch.channels_last)
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


# BEGIN SOLUTION 3
class ClassCodeStatistics(nn.Module):
    """Running mean and covariance of the codes of each class, kept while training the way
    BatchNorm keeps its running statistics (an average over the recent batches, no gradient).

    They define where generation draws from: a sample of class c is decoded from
    z_c = m_c + L_c eps, eps ~ N(0, I), with L_c the Cholesky factor of the covariance S_c, so
    "whiten" maps a code to its eps and "colour" maps eps back. Before any training m = 0, L = I."""

    def __init__(self, latent_dim: int, num_classes: int, momentum: float = 0.01):
        super().__init__()
        self.momentum = momentum
        self.register_buffer("mean", torch.zeros(num_classes, latent_dim))
        self.register_buffer("second_moment", torch.eye(latent_dim).repeat(num_classes, 1, 1))

    @torch.no_grad()
    def update(self, codes, labels):
        # The statistics stay in fp32 whatever the training loop runs in: under bf16 autocast the
        # products below would come out in bf16 (8 bits of mantissa, and lerp_ refuses them).
        with torch.autocast(codes.device.type, enabled=False):
            codes = codes.detach().float()
            # All classes at once, without a Python loop over them: the batch's mean and second
            # moment of each class, moved in by `momentum`; a class absent from the batch moves by 0.
            one_hot = F.one_hot(labels, self.mean.shape[0]).float()                       # [B, K]
            counts = one_hot.sum(dim=0)                                                   # [K]
            per_image = one_hot / counts.clamp(min=1)                                     # [B, K]
            batch_mean = per_image.T @ codes                                              # [K, D]
            batch_second_moment = torch.einsum("bk,bi,bj->kij", per_image, codes, codes)  # [K, D, D]
            weight = self.momentum * (counts > 0).float()
            self.mean.lerp_(batch_mean, weight[:, None])
            self.second_moment.lerp_(batch_second_moment, weight[:, None, None])

    def scale_tril(self, labels):
        mean = self.mean[labels].double()
        cov = self.second_moment[labels].double() - mean[:, :, None] * mean[:, None, :]
        cov = cov + 1e-6 * torch.eye(cov.shape[-1], dtype=cov.dtype, device=cov.device)
        return torch.linalg.cholesky(cov)

    def whiten(self, mu, log_var, labels):
        """(eps, log variance of eps) for the codes N(mu, exp(log_var)) of class `labels`; the
        variance is the diagonal of L^-1 diag(sigma^2) L^-T."""
        inverse = torch.linalg.inv(self.scale_tril(labels))
        eps = inverse @ (mu.double() - self.mean[labels].double())[:, :, None]
        var = (inverse ** 2) @ log_var.double().exp()[:, :, None]
        return eps.squeeze(-1).to(mu.dtype), var.squeeze(-1).log().to(log_var.dtype)

    def colour(self, eps, labels):
        z = self.mean[labels].double() + (self.scale_tril(labels) @ eps.double()[:, :, None]).squeeze(-1)
        return z.to(eps.dtype)
# END SOLUTION


class GenModel(nn.Module):
    """Section 3: a conditional VAE. Encoder and decoder both see the label (one-hot), so
    the code only has to carry the style of the digit, and decode(z, 5) draws a 5.

    decode(z ~ N(0, I), label) draws good digits only where the decoder was trained. The KL
    term pulls the codes towards N(0, I) but never gets them there: the codes of real 5s fill a
    smaller, tilted region, and many N(0, I) draws land outside it and decode to smudges. So
    forward keeps running statistics of each class's codes while training (any training loop
    gets them, as with BatchNorm), and the model speaks of its codes in the coordinates where
    each class's codes are N(0, I): decode colours z into that region, and in eval mode forward
    returns its posterior means whitened the same way. decode(mu, label) is then exactly the
    model's own reconstruction, and decode(z ~ N(0, I), label) draws where 5s were seen."""

    def __init__(self, latent_dim: int = 8, width: int = 32, hidden: int = 256):
        super().__init__()
        # BEGIN SOLUTION 3
        self.latent_dim = latent_dim
        self.encoder = ConvEncoder(latent_dim, extra_features=NUM_CLASSES, width=width, hidden=hidden)
        self.decoder = ConvDecoder(latent_dim, extra_features=NUM_CLASSES, width=width, hidden=hidden)
        self.code_statistics = ClassCodeStatistics(latent_dim, NUM_CLASSES)
        # END SOLUTION

    def one_hot(self, labels, batch_size, device):
        return F.one_hot(as_label_batch(labels, batch_size, device), NUM_CLASSES).float()

    def encode(self, x, labels):
        # BEGIN SOLUTION 3
        return self.encoder(x, self.one_hot(labels, x.shape[0], x.device))
        # END SOLUTION

    def reparameterize(self, mu, log_var):
        # BEGIN SOLUTION 3
        if not self.training:
            return mu
        return mu + torch.randn_like(mu) * torch.exp(0.5 * log_var)
        # END SOLUTION

    def decode(self, z, labels):
        """Digits of class `labels` (an int, a 0-dim tensor or one label per row of z) from codes
        z in the model's coordinates (z ~ N(0, I) for new digits)."""
        # BEGIN SOLUTION 3
        labels = as_label_batch(labels, len(z), z.device)
        return self.decoder(self.code_statistics.colour(z, labels), self.one_hot(labels, len(z), z.device))
        # END SOLUTION

    def forward(self, x, labels):
        # BEGIN SOLUTION 3
        labels = as_label_batch(labels, x.shape[0], x.device)
        condition = self.one_hot(labels, x.shape[0], x.device)
        mu, log_var = self.encoder(x, condition)
        if self.training:
            self.code_statistics.update(mu, labels)
            z = self.reparameterize(mu, log_var)
            return self.decoder(z, condition), mu, log_var
        # Eval: the reconstruction from the posterior mean, and the codes in decode's coordinates.
        recon_x = self.decoder(mu, condition)
        return (recon_x, *self.code_statistics.whiten(mu, log_var, labels))
        # END SOLUTION
