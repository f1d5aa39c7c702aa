"""The student's part of the lab: a VAE, its loss, and a label-conditional generator.

What the lab's scripts call (the handout's contract, defined in contract.py):
    model = VAE(latent_dim=24)                   # or GenModel(latent_dim=24)
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

# BEGIN SOLUTION 2.2.1
IMAGE_PIXELS = 28 * 28
# Fully connected layers: on a CPU they train several times more images per second than
# convolutions of the same quality per epoch, so they reach a grade in fewer seconds
# (docs/model.md measures both).
HIDDEN = (512, 256)


def layers(*widths):
    """Fully connected layers of these widths, a LeakyReLU between each two; the last output is linear."""
    modules = []
    for inputs, outputs in zip(widths, widths[1:]):
        modules += [nn.Linear(inputs, outputs), nn.LeakyReLU(0.2)]
    return nn.Sequential(*modules[:-1])
# END SOLUTION


class VAE(nn.Module):
    """Section 2's VAE (task VAE0label): labels are accepted and ignored."""

    def __init__(self, latent_dim: int = 24):
        super().__init__()
        self.latent_dim = latent_dim
        # BEGIN SOLUTION 2.2.1
        # One output layer for mu and log_var side by side: log_var is unconstrained, unlike a variance.
        self.encoder = layers(IMAGE_PIXELS, *HIDDEN, 2 * latent_dim)
        self.decoder = layers(latent_dim, *reversed(HIDDEN), IMAGE_PIXELS)
        # END SOLUTION

    def encode(self, x):
        # BEGIN SOLUTION 2.2.2
        mu, log_var = self.encoder(x.reshape(len(x), IMAGE_PIXELS)).chunk(2, dim=1)
        # exp(log_var) overflows float32 past ~88; clamping keeps a diverging run finite
        # long enough for the trainer to report it.
        return mu, log_var.clamp(-30.0, 20.0)
        # END SOLUTION

    def decode(self, z, labels=None):
        # BEGIN SOLUTION 2.2.3
        # A sigmoid keeps every pixel in [0, 1], the range of the data.
        return torch.sigmoid(self.decoder(z)).reshape(-1, 28, 28)
        # END SOLUTION

    def reparameterize(self, mu, log_var):
        # BEGIN SOLUTION 2.2.4
        if not self.training:
            return mu  # reconstruct from the posterior mean: no sampling noise at test time
        # z = mu + sigma * eps with eps ~ N(0, I): the randomness sits in eps, so gradients
        # flow through mu and sigma = exp(log_var / 2) to the encoder.
        eps = torch.randn_like(mu)
        return mu + eps * torch.exp(0.5 * log_var)
        # END SOLUTION

    def forward(self, x, labels=None):
        # BEGIN SOLUTION 2.2.4
        mu, log_var = self.encode(x)
        z = self.reparameterize(mu, log_var)
        return self.decode(z), mu, log_var
        # END SOLUTION


def vae_loss(recon_x, x, mu, log_var, var=0.5) -> torch.Tensor:
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
# Section 3 in two steps.
#   Step 1, ConditionalVAE: section 2's VAE with the label as one more input to the encoder and
#           to the decoder. On its own it is a complete answer: decode(z ~ N(0, I), 5) draws a 5.
#   Step 2, ClassCodeStatistics: draw where each class's codes really are, not from N(0, I).
# GenModel, below, is step 1 with step 2 in front of its decoder.
NUM_CLASSES = 10
COMPONENTS = 20  # clumps per class (docs/model.md: 1 against 20)
SPREAD = 0.8     # draws use each clump at 0.8 of its width (benchmarks/sampling_spread.py)


def as_label_batch(labels, batch_size: int, device) -> torch.Tensor:
    """Labels given as a Python int, a 0-dim tensor or a [B] tensor -> int64 tensor [B]."""
    labels = torch.as_tensor(labels, device=device).long().reshape(-1)
    if labels.numel() == 1:
        labels = labels.expand(batch_size)
    if labels.shape != (batch_size,):
        raise ValueError(f"expected {batch_size} labels (or one), got shape {list(labels.shape)}")
    return labels


def one_hot(labels, batch_size: int, device) -> torch.Tensor:
    return nn.functional.one_hot(as_label_batch(labels, batch_size, device), NUM_CLASSES).float()


class ConditionalVAE(nn.Module):
    """Step 1, a conditional VAE: the VAE of section 2 whose encoder reads the image and its label
    (one-hot), and whose decoder reads the code and the label. The label already says which digit
    it is, so the code only has to carry its style (slant, thickness), and decode(z, 5) draws a 5.

    Why it is not the end: the KL term pulls each image's code towards N(0, I) but never gets it
    there. The codes of real 5s fill a smaller region made of clumps (5s of different styles), and
    a draw z ~ N(0, I) that lands between the clumps decodes to a hybrid the eye cannot read."""

    def __init__(self, latent_dim: int):
        super().__init__()
        self.encoder = layers(IMAGE_PIXELS + NUM_CLASSES, *HIDDEN, 2 * latent_dim)
        self.decoder = layers(latent_dim + NUM_CLASSES, *reversed(HIDDEN), IMAGE_PIXELS)

    reparameterize = VAE.reparameterize  # the trick of section 2, unchanged

    def encode(self, x, labels):
        image_and_label = torch.cat([x.reshape(len(x), IMAGE_PIXELS), one_hot(labels, len(x), x.device)], dim=1)
        mu, log_var = self.encoder(image_and_label).chunk(2, dim=1)
        return mu, log_var.clamp(-30.0, 20.0)

    def decode(self, z, labels):
        code_and_label = torch.cat([z, one_hot(labels, len(z), z.device)], dim=1)
        return torch.sigmoid(self.decoder(code_and_label)).reshape(-1, 28, 28)

    def forward(self, x, labels):
        mu, log_var = self.encode(x, labels)
        return self.decode(self.reparameterize(mu, log_var), labels), mu, log_var


class ClassCodeStatistics(nn.Module):
    """Step 2, where each class's codes are: a mixture of `components` Gaussians (clumps) per class,
    fitted to the encoder's codes while the model trains, and kept the way BatchNorm keeps its
    running statistics (an average over recent batches, no gradient), so any training loop fits it.

    Fitting: each training batch does one step of k-means. Every code joins the clump of its class
    with the nearest mean, and each clump's count, sum and sum of outer products (all a Gaussian
    needs) move `momentum` of the way towards the batch's. A class's first batch is dealt out to the
    clumps in turn, so that they start apart. A pseudo-count of PRIOR observations of N(0, I) keeps
    an empty clump defined (before any training every clump is N(0, I)).

    Drawing: the model's own codes z ~ N(0, I) are turned into codes of the class (colour). Two
    numbers of z pick a clump, a row then a column of a grid of them, each clump as often as its
    share of the class; the other numbers are the style inside it, drawn at `spread` times its width
    (below 1: fewer draws from the clump's rim, where the odd digits are). Two numbers rather than
    one: the autograder moves every number of a code by a few percent of its spread, and one number
    cut into 20 slices has slices too thin to keep a moved code in its clump. whiten is colour's
    inverse, so that the model reports its codes in the coordinates decode reads."""

    PRIOR = 1e-3

    def __init__(self, code_dim: int, num_classes: int, components: int = COMPONENTS, momentum: float = 0.01,
                 spread: float = SPREAD, selectors: int = 2):
        super().__init__()
        # selectors: how many numbers of z pick the clump (2, or 0 with a single clump)
        self.momentum, self.spread, self.selectors = momentum, spread, selectors
        # Rows x columns, as square as the number of clumps allows (20: 4 x 5).
        columns = next(c for c in range(1, components + 1) if components % c == 0 and c * c >= components)
        self.grid = (components // columns, columns)
        self.register_buffer("count", torch.zeros(num_classes, components))
        self.register_buffer("total", torch.zeros(num_classes, components, code_dim))
        self.register_buffer("total_outer", torch.zeros(num_classes, components, code_dim, code_dim))

    def means(self):
        return self.total / (self.count + self.PRIOR)[..., None]

    def weights(self):
        return (self.count + self.PRIOR) / (self.count + self.PRIOR).sum(dim=-1, keepdim=True)

    def nearest(self, codes, labels):
        """The clump of its class whose mean is nearest to each code."""
        return (codes[:, None, :] - self.means()[labels]).pow(2).sum(dim=-1).argmin(dim=1)

    @torch.no_grad()
    def update(self, codes, labels):
        # The statistics stay in fp32 whatever the training loop runs in: under bf16 autocast the
        # products below would come out in bf16 (8 bits of mantissa, and lerp_ refuses them).
        with torch.autocast(codes.device.type, enabled=False):
            codes = codes.detach().float()
            classes, components, dim = self.total.shape
            first_batch = self.count.sum(dim=1)[labels] == 0
            dealt = torch.arange(len(codes), device=codes.device) % components
            component = torch.where(first_batch, dealt, self.nearest(codes, labels))
            # All classes and clumps at once: row g of `member` marks the codes of group g.
            member = nn.functional.one_hot(labels * components + component, classes * components).float().T  # [C*K, B]
            batch_count = member.sum(dim=1).reshape(classes, components)
            batch_total = (member @ codes).reshape(classes, components, dim)
            outer = (codes[:, :, None] * codes[:, None, :]).reshape(len(codes), dim * dim)
            batch_outer = (member @ outer).reshape(classes, components, dim, dim)
            # A class absent from the batch moves by 0; one seen for the first time takes the batch's.
            seen = (batch_count.sum(dim=1) > 0).float()
            rate = torch.where(self.count.sum(dim=1) == 0, seen, self.momentum * seen)
            self.count.lerp_(batch_count, rate[:, None])
            self.total.lerp_(batch_total, rate[:, None, None])
            self.total_outer.lerp_(batch_outer, rate[:, None, None, None])

    def component(self, labels, component):
        """(mean, Cholesky factor L of the covariance) of one clump per row, in float64 (a clump
        can be thin in some direction, and its Cholesky factor must exist)."""
        count = (self.count[labels, component] + self.PRIOR).double()
        mean = self.total[labels, component].double() / count[:, None]
        eye = torch.eye(mean.shape[1], dtype=torch.float64, device=mean.device)
        second_moment = (self.total_outer[labels, component].double() + self.PRIOR * eye) / count[:, None, None]
        cov = second_moment - mean[:, :, None] * mean[:, None, :] + 1e-6 * eye
        return mean, torch.linalg.cholesky(cov)

    def grid_weights(self, labels):
        """The clumps of a class as a grid of rows x columns: (weights of the rows [B, R], weights
        of the columns within each row [B, R, C]), so that row r, column c has weight[r] * column[r, c]."""
        weights = self.weights()[labels].double().reshape(len(labels), *self.grid)
        rows = weights.sum(dim=2)
        return rows, weights / rows[:, :, None]

    def colour(self, z, labels):
        """The model's codes z -> codes of the class: z[:, 0] picks a row of the grid of clumps and
        z[:, 1] a column in it (each owns a slice of N(0, 1)'s probability as wide as its weight), and
        z[:, 2:] ~ N(0, I) is coloured by that clump: mean + L (spread z[:, 2:])."""
        if self.selectors:
            rows, columns = self.grid_weights(labels)
            row = slice_of(z[:, 0].double(), rows)
            column = slice_of(z[:, 1].double(), columns[torch.arange(len(z)), row])
            component = row * self.grid[1] + column
        else:
            component = torch.zeros_like(labels)
        mean, scale_tril = self.component(labels, component)
        style = self.spread * z[:, self.selectors:].double()
        return (mean + (scale_tril @ style[:, :, None]).squeeze(-1)).to(z.dtype)

    def whiten(self, mu, log_var, labels):
        """Codes N(mu, exp(log_var)) -> (z, log variance of z) in the model's coordinates, so that
        colour(z) == mu: z[:, :2] are the middles of the slices of the row and column of mu's nearest
        clump, z[:, 2:] is L^-1 (mu - mean) / spread, with the variance
        diag(L^-1 diag(sigma^2) L^-T) / spread^2."""
        component = self.nearest(mu.float(), labels)
        mean, scale_tril = self.component(labels, component)
        inverse = torch.linalg.inv(scale_tril) / self.spread
        eps = (inverse @ (mu.double() - mean)[:, :, None]).squeeze(-1)
        var = ((inverse ** 2) @ log_var.double().exp()[:, :, None]).squeeze(-1)
        if not self.selectors:
            return eps.to(mu.dtype), var.log().to(log_var.dtype)
        row, column = component // self.grid[1], component % self.grid[1]
        rows, columns = self.grid_weights(labels)
        row_z, row_width = middle_of(row, rows)
        column_z, column_width = middle_of(column, columns[torch.arange(len(mu)), row])
        # A selector's standard deviation: a quarter of its slice, so that a slightly moved z[:, :2]
        # keeps to the clump.
        selector_var = torch.stack([row_width, column_width], dim=1).div(4).pow(2)
        z = torch.cat([row_z[:, None], column_z[:, None], eps], dim=1)
        return z.to(mu.dtype), torch.cat([selector_var, var], dim=1).log().to(log_var.dtype)


def slice_of(z, weights):
    """Which slice of N(0, 1)'s probability z falls in, slice i being weights[:, i] wide ([B, n], rows
    summing to 1): a draw z ~ N(0, 1) picks slice i with probability weights[:, i]."""
    upper = weights.cumsum(dim=1)
    index = torch.searchsorted(upper, torch.special.ndtr(z)[:, None], right=True).squeeze(1)
    return index.clamp(max=weights.shape[1] - 1)


def middle_of(index, weights):
    """(z at the middle of slice `index`, the slice's width in z) for the slices of slice_of."""
    width = weights.gather(1, index[:, None]).squeeze(1)
    z = torch.special.ndtri(weights.cumsum(dim=1).gather(1, index[:, None]).squeeze(1) - width / 2)
    density = torch.exp(-z ** 2 / 2) / (2 * torch.pi) ** 0.5
    return z, width / density
# END SOLUTION


class GenModel(nn.Module):
    """Section 3 (task Genwithlabel): decode(z, label) returns images of that label."""

    def __init__(self, latent_dim: int = 24):
        super().__init__()
        self.latent_dim = latent_dim
        # BEGIN SOLUTION 3
        # Two of the latent_dim numbers pick a clump; a code of 1 or 2 numbers has none to spare for
        # that, and keeps one Gaussian per class instead.
        selectors = 2 if latent_dim >= 3 else 0
        components = COMPONENTS
        if not selectors:
            import warnings  # here, not at the top: the starter kit keeps no import of the solution's
            warnings.warn(f"GenModel: latent_dim {latent_dim} leaves no numbers to pick among {components} "
                          f"clumps per class: one Gaussian per class", stacklevel=2)
            components = 1
        code_dim = latent_dim - selectors  # what the encoder writes and the decoder reads
        self.cvae = ConditionalVAE(code_dim)
        self.code_statistics = ClassCodeStatistics(code_dim, NUM_CLASSES, components, selectors=selectors)
        # END SOLUTION

    def forward(self, x, labels):
        # BEGIN SOLUTION 3
        labels = as_label_batch(labels, len(x), x.device)
        recon_x, mu, log_var = self.cvae(x, labels)
        if self.training:
            self.code_statistics.update(mu, labels)
            # The numbers that pick a clump are not inferred from the image while training (the
            # decoder reads the code itself), so their posterior is the prior N(0, 1): mu 0 and
            # log_var 0, which add exactly 0 to the KL term.
            selectors = mu.new_zeros(len(mu), self.code_statistics.selectors)
            return recon_x, torch.cat([selectors, mu], dim=1), torch.cat([selectors, log_var], dim=1)
        # Eval: the reconstruction from the posterior mean, and the codes in decode's coordinates.
        return (recon_x, *self.code_statistics.whiten(mu, log_var, labels))
        # END SOLUTION

    def decode(self, z, labels):
        # BEGIN SOLUTION 3
        labels = as_label_batch(labels, len(z), z.device)
        return self.cvae.decode(self.code_statistics.colour(z, labels), labels)
        # END SOLUTION
