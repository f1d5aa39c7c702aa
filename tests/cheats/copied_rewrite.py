"""Cheat (similarity): copied_a.py rewritten, without changing what it computes, the way a motivated
student hides a copy: every name of its own renamed (helper, methods other than the contract's,
layers, arguments, locals), functions, methods and independent statements reordered, operands of
+, * and == swapped, keyword arguments passed by position, torch functions called as tensor methods,
expressions split into temporaries, two layers applied in a loop, an if/return pair written as a
conditional expression, new docstrings and comments, and unused helpers pasted in. Same contract as
copied_a.py: VAE, GenModel (latent 12 by default) and vae_loss; decode takes an int, 0-dim or [B] label."""
from torch import nn as tnn
from torch.nn import functional as fn
import torch


class GenModel(tnn.Module):
    """Conditional model: the code and the image are both seen with the digit's class."""

    def forward(self, images, digits):
        centre, spread = self._posterior(images, digits)
        sample = self._draw(centre, spread)
        return self.decode(sample, digits), centre, spread

    def _draw(self, centre, spread):
        """Sample in training, the mean otherwise."""
        if not self.training:
            return centre
        sigma = (spread * 0.5).exp()
        return torch.randn_like(sigma) * sigma + centre

    def __init__(self, latent_dim=12, hidden_dim=320):
        super(GenModel, self).__init__()
        # the decoder's layers first, then the encoder's
        self.up_a = tnn.Linear(10 + latent_dim, hidden_dim // 2)
        self.up_b = tnn.Linear(hidden_dim // 2, hidden_dim)
        self.up_out = tnn.Linear(hidden_dim, 784)
        self.latent_dim = latent_dim
        self.down = tnn.Linear(10 + 784, hidden_dim)
        self.to_centre = tnn.Linear(hidden_dim, latent_dim)
        self.to_spread = tnn.Linear(hidden_dim, latent_dim)

    def decode(self, code, digits):
        rows = code.size(0)
        cond = _labels_to_onehot(digits, rows, code.device)
        feats = torch.cat([code, cond], 1)
        for layer in (self.up_a, self.up_b):
            feats = fn.leaky_relu(layer(feats), 0.2)
        logits = self.up_out(feats)
        return logits.sigmoid()

    def _posterior(self, images, digits):
        images = images.view(images.size(0), -1)
        cond = _labels_to_onehot(digits, images.size(0), images.device)
        both = torch.cat([images, cond], 1)
        feats = fn.leaky_relu(self.down(both), 0.2)
        return (self.to_centre(feats), self.to_spread(feats))


def _describe(model):
    """Unused: a one-line summary of a model, for printing while debugging."""
    count = sum(p.numel() for p in model.parameters())
    return "{} with {} parameters".format(type(model).__name__, count)


def vae_loss(recon_x, x, mu, log_var, var=0.5):
    """Negative ELBO, averaged over the batch."""
    n = x.size(0)
    # the KL part first
    kl = (mu ** 2 - log_var + log_var.exp() - 1).sum(1) * 0.5
    diff = recon_x.view(n, -1) - x.view(n, -1)
    rec = (diff ** 2).sum(1) / (var * 2)
    total = kl
    total += rec
    return total.mean()


def _labels_to_onehot(digits, rows, where):
    """int, 0-dim or [B] labels as a [B, 10] float one-hot."""
    digits = torch.as_tensor(digits, device=where).long().view(-1)
    digits = digits.repeat(rows) if 1 == digits.numel() else digits
    return fn.one_hot(digits, 10).float()


def _clamp_codes(codes, bound=3.0):
    """Unused: keep codes inside a box, for plots."""
    out = []
    for value in codes:
        out.append(max(min(value, bound), -bound))
    return out


class VAE(tnn.Module):
    """Label-free model: labels are accepted and ignored."""

    def decode(self, code, digits=None):
        feats = code
        for layer in (self.up_a, self.up_b):
            feats = fn.leaky_relu(layer(feats), 0.2)
        return self.up_out(feats).sigmoid()

    def __init__(self, latent_dim=12, hidden_dim=320):
        super(VAE, self).__init__()
        self.up_a = tnn.Linear(latent_dim, hidden_dim // 2)
        self.up_b = tnn.Linear(hidden_dim // 2, hidden_dim)
        self.up_out = tnn.Linear(hidden_dim, 784)
        self.latent_dim = latent_dim
        self.down = tnn.Linear(784, hidden_dim)
        self.to_centre = tnn.Linear(hidden_dim, latent_dim)
        self.to_spread = tnn.Linear(hidden_dim, latent_dim)

    def forward(self, images, digits=None):
        centre, spread = self._posterior(images)
        return self.decode(self._draw(centre, spread)), centre, spread

    def _posterior(self, images):
        flat = images.view(images.size(0), -1)
        feats = torch.nn.functional.leaky_relu(self.down(flat), 0.2)
        return self.to_centre(feats), self.to_spread(feats)

    def _draw(self, centre, spread):
        if not self.training:
            return centre
        sigma = (spread * 0.5).exp()
        return torch.randn_like(sigma) * sigma + centre
