"""The model contract (contract.py, the README's "The contract"), for submission.VAE, submission.GenModel and model.VAE."""
from pathlib import Path

import numpy as np
import pytest
import torch

import model as demo
import submission
from submission import ClassCodeStatistics, GenModel, VAE, vae_loss

MODELS = {"VAE": lambda: VAE(latent_dim=5), "GenModel": lambda: GenModel(latent_dim=5),
          "demo": lambda: demo.VAE(latent_dim=5)}


def batch(n=6, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return torch.rand(n, 1, 28, 28, generator=generator), torch.randint(0, 10, (n,), generator=generator)


@pytest.mark.parametrize("name", MODELS)
@pytest.mark.parametrize("squeeze", [False, True])
def test_forward_shapes_and_ranges(name, squeeze):
    model = MODELS[name]()
    x, labels = batch()
    recon_x, mu, log_var = model(x.squeeze(1) if squeeze else x, labels)
    assert recon_x.shape == (6, 28, 28) and mu.shape == log_var.shape == (6, 5)
    assert recon_x.dtype == torch.float32 and 0 <= recon_x.min() and recon_x.max() <= 1


@pytest.mark.parametrize("name", MODELS)
@pytest.mark.parametrize("label", [3, torch.tensor(3), torch.full((4,), 3)])
def test_decode_accepts_int_0dim_and_batch_labels(name, label):
    model = MODELS[name]().eval()
    z = torch.randn(4, 5)
    images = model.decode(z, label)
    assert images.reshape(4, -1).shape == (4, 784) and 0 <= images.min() and images.max() <= 1
    assert torch.equal(images, model.decode(z, torch.full((4,), 3)))


@pytest.mark.parametrize("name", ["VAE", "demo"])
def test_unlabeled_models_ignore_labels(name):
    model = MODELS[name]().eval()
    x, labels = batch()
    first = model(x, labels)
    second = model(x, (labels + 1) % 10)
    for a, b in zip(first, second):
        assert torch.equal(a, b)
    assert torch.equal(model.decode(torch.ones(2, 5), 1), model.decode(torch.ones(2, 5), 7))


def test_genmodel_uses_labels():
    model = GenModel(latent_dim=5).eval()
    x, labels = batch()
    recon_a, mu_a, _ = model(x, labels)
    recon_b, mu_b, _ = model(x, (labels + 1) % 10)
    assert not torch.allclose(recon_a, recon_b) and not torch.allclose(mu_a, mu_b)
    assert not torch.allclose(model.decode(torch.ones(2, 5), 1), model.decode(torch.ones(2, 5), 7))


@pytest.mark.parametrize("name", MODELS)
def test_eval_reconstructs_from_the_mean_train_samples(name):
    model = MODELS[name]()
    x, labels = batch()
    model.eval()
    a, b = model(x, labels)[0], model(x, labels)[0]
    assert torch.equal(a, b)
    vae = model.cvae if name == "GenModel" else model  # GenModel's step 1 is a conditional VAE
    mu, _ = vae.encode(x, labels) if name == "GenModel" else vae.encode(x)
    assert torch.equal(vae.reparameterize(mu, torch.zeros_like(mu)), mu)
    model.train()
    torch.manual_seed(1)
    c = model(x, labels)[0]
    assert not torch.allclose(a, c)


@pytest.mark.parametrize("name", MODELS)
def test_reconstruction_depends_on_the_image_only_through_its_code(name, monkeypatch):
    """Honest compression: two different images forced onto the same code give the same output."""
    model = MODELS[name]().eval()
    x, labels = batch(2)
    assert not torch.equal(x[0], x[1])
    width = 3 if name == "GenModel" else 5  # GenModel's encoder writes latent_dim - 2 numbers (two pick a component)
    code = torch.randn(1, width).expand(2, width)
    same_label = labels[:1].expand(2)
    honest_recon, _, _ = model(x, same_label)
    assert (honest_recon[0] - honest_recon[1]).abs().max() > 2e-5  # control: different codes, different outputs
    target = model.cvae if name == "GenModel" else model
    monkeypatch.setattr(target, "encode", lambda x, labels=None: (code, torch.zeros_like(code)))
    recon_x, _, _ = model(x, same_label)
    # Equal up to float rounding of batched kernels; a path around z would differ like the control.
    assert (recon_x[0] - recon_x[1]).abs().max() < 1e-6


def reference_loss(recon_x, x, mu, log_var, var):
    """SPEC's per-sample formula, written with numpy loops."""
    recon_x, x = recon_x.double().numpy().reshape(len(x), -1), x.double().numpy().reshape(len(x), -1)
    mu, log_var = mu.double().numpy(), log_var.double().numpy()
    total = 0.0
    for b in range(len(x)):
        kl = sum(0.5 * (-1 + np.exp(lv) + m * m - lv) for m, lv in zip(mu[b], log_var[b]))
        total += kl + sum((x[b] - recon_x[b]) ** 2) / (2 * var)
    return total / len(x)


@pytest.mark.parametrize("var", [0.5, 0.02])
def test_vae_loss_matches_the_formula(var):
    generator = torch.Generator().manual_seed(3)
    x = torch.rand(4, 1, 28, 28, generator=generator)
    recon_x = torch.rand(4, 28, 28, generator=generator)     # note the shape differs from x
    mu, log_var = torch.randn(4, 5, generator=generator), torch.randn(4, 5, generator=generator)
    loss = vae_loss(recon_x, x, mu, log_var, var=var)
    assert loss.shape == ()
    assert loss.item() == pytest.approx(reference_loss(recon_x, x, mu, log_var, var), rel=1e-5)
    # The broadcasting trap: a naive x - recon_x here would be [4,4,28,28] and a wrong value.
    naive = ((x - recon_x) ** 2).sum() / (2 * var) / 4
    assert abs(naive.item() - loss.item()) > 1.0
    assert vae_loss(recon_x, x.squeeze(1), mu, log_var, var=var).item() == pytest.approx(loss.item(), rel=1e-6)


def test_vae_loss_default_var_and_gradients():
    x = torch.rand(2, 1, 28, 28)
    recon_x = torch.rand(2, 28, 28, requires_grad=True)
    mu, log_var = torch.zeros(2, 3, requires_grad=True), torch.zeros(2, 3, requires_grad=True)
    loss = vae_loss(recon_x, x, mu, log_var)
    assert loss.item() == pytest.approx(((x.reshape(2, -1) - recon_x.reshape(2, -1)) ** 2).sum().item() / 2, rel=1e-6)
    loss.backward()
    assert recon_x.grad is not None and torch.all(mu.grad == 0)


def by_hand(codes, labels, component, classes, components):
    """count, sum and sum of outer products of each (class, component) group, with Python loops."""
    dim = codes.shape[1]
    count, total, outer = torch.zeros(classes, components), torch.zeros(classes, components, dim), \
        torch.zeros(classes, components, dim, dim)
    for code, c, k in zip(codes, labels.tolist(), component):
        count[c, k] += 1
        total[c, k] += code
        outer[c, k] += torch.outer(code, code)
    return count, total, outer


def test_the_class_mixture_deals_out_a_first_batch_then_follows_the_nearest_means():
    """A class's first batch goes to the components in turn (batch position mod K) and sets the
    statistics whole; later batches join each code to its class's nearest mean and move the
    count, sum and sum of outer products `momentum` of the way; a class absent from a batch stays."""
    torch.manual_seed(0)
    stats = ClassCodeStatistics(2, 3, components=2, momentum=0.25)
    codes, labels = torch.randn(12, 2), torch.tensor([0, 0, 1, 1, 0, 1, 0, 1, 0, 0, 1, 1])  # no class 2
    stats.update(codes, labels)
    count, total, outer = by_hand(codes, labels, [i % 2 for i in range(12)], 3, 2)
    assert torch.allclose(stats.count, count) and torch.allclose(stats.total, total, atol=1e-6)
    assert torch.allclose(stats.total_outer, outer, atol=1e-6)
    assert torch.equal(stats.count[2], torch.zeros(2))
    means = total / (count + ClassCodeStatistics.PRIOR)[..., None]
    more_codes, more_labels = torch.randn(8, 2) * 2, torch.zeros(8, dtype=torch.long)  # class 0 only
    nearest = [int(((code - means[c]) ** 2).sum(1).argmin()) for code, c in zip(more_codes, more_labels.tolist())]
    assert len(set(nearest)) == 2  # both components get codes
    before = {name: getattr(stats, name).clone() for name in ("count", "total", "total_outer")}
    stats.update(more_codes, more_labels)
    count2, total2, outer2 = by_hand(more_codes, more_labels, nearest, 3, 2)
    assert torch.allclose(stats.count[0], 0.75 * count[0] + 0.25 * count2[0])
    assert torch.allclose(stats.total[0], 0.75 * total[0] + 0.25 * total2[0], atol=1e-6)
    assert torch.allclose(stats.total_outer[0], 0.75 * outer[0] + 0.25 * outer2[0], atol=1e-6)
    for name in ("count", "total", "total_outer"):  # classes 1 (seen before) and 2 (never) stay as they were
        assert torch.equal(getattr(stats, name)[1:], before[name][1:])


def test_genmodel_forward_keeps_the_statistics_of_the_encoders_means_in_train_mode_only():
    torch.manual_seed(0)
    model = GenModel(latent_dim=4)
    x, labels = batch(64)
    mu, _ = model.cvae.encode(x, labels)
    expected = ClassCodeStatistics(2, 10, components=20)
    expected.update(mu.detach(), labels)
    _, returned_mu, returned_log_var = model(x, labels)
    assert torch.equal(returned_mu[:, :2], torch.zeros(64, 2)) and torch.equal(returned_log_var[:, :2], torch.zeros(64, 2))
    assert torch.allclose(returned_mu[:, 2:], mu)
    for name in ("count", "total", "total_outer"):
        assert torch.allclose(getattr(model.code_statistics, name), getattr(expected, name), atol=1e-6)
    kept = model.code_statistics.count.clone()
    model.eval()
    model(x, labels)
    assert torch.equal(model.code_statistics.count, kept)


def set_mixture(stats, label, weights, means, covs):
    """Statistics of class `label` that hold exactly these components (counts = weights)."""
    for k, (w, m, cov) in enumerate(zip(weights, means, covs)):
        stats.count[label, k] = w
        stats.total[label, k] = w * m
        stats.total_outer[label, k] = w * (cov + torch.outer(m, m))


def test_genmodel_samples_each_class_mixture_with_its_weights():
    """decode(z, c): the components form a grid (4 of them: 2 x 2); z[:, 0] picks the row whose
    slice of N(0, 1)'s probability Phi(z0) falls in (slices as wide as the rows' weights), z[:, 1]
    the column within the row (slices as wide as the columns' shares of the row), and z[:, 2:] is
    coloured by that component: m_k + L_k (0.8 z[:, 2:]), 0.8 being GenModel's default spread."""
    torch.manual_seed(0)
    model = GenModel(latent_dim=4).eval()
    model.code_statistics = ClassCodeStatistics(2, 10, components=4)
    assert model.code_statistics.grid == (2, 2)
    means = [torch.tensor([3.0, -1.0]), torch.tensor([-2.0, 0.5]), torch.tensor([0.0, 4.0]), torch.tensor([1.0, 1.0])]
    covs = [torch.tensor([[4.0, 1.0], [1.0, 2.0]]), torch.tensor([[1.0, -0.3], [-0.3, 0.5]]),
            torch.eye(2) * 0.25, torch.tensor([[2.0, 0.0], [0.0, 0.1]])]
    set_mixture(model.code_statistics, 7, [1000.0, 2000.0, 3000.0, 4000.0], means, covs)  # PRIOR negligible
    # weights 0.1 0.2 | 0.3 0.4: row 0 owns [0, 0.3) of the first number's probability, row 1 the rest;
    # within row 0 the columns own [0, 1/3) and [1/3, 1), within row 1 [0, 3/7) and [3/7, 1)
    cases = [(0.2, 0.5, 1), (0.2, 0.3, 0), (0.5, 0.4, 2), (0.5, 0.45, 3), (0.99, 0.01, 2), (0.29, 0.9, 1)]
    style = torch.randn(len(cases), 2)
    z = torch.cat([torch.special.ndtri(torch.tensor([[a, b] for a, b, _ in cases])), style], 1)
    expected = torch.stack([means[k] + torch.linalg.cholesky(covs[k]) @ (0.8 * eps)
                            for (_, _, k), eps in zip(cases, style)])
    expected = model.cvae.decode(expected.float(), 7)
    assert torch.allclose(model.decode(z, 7), expected, atol=1e-4)


@pytest.mark.slow
def test_genmodel_eval_codes_sit_mid_slice_and_survive_the_autograders_perturbation():
    """Eval forward returns z[:, 0] and z[:, 1] in the middles of the row's and the column's slices
    of the nearest component, and z[:, 2:] = L^-1 (mu - m) / 0.8 (the spread); moving every number
    by 5% of its spread over the codes (the autograder's perturbation check) leaves all but a few
    codes in their component, with the 20 components GenModel has by default."""
    torch.manual_seed(0)
    model = GenModel(latent_dim=5)
    stats = model.code_statistics
    assert stats.grid == (4, 5)
    x, labels = batch(2000)
    x = (x < 0.2).float() * x  # images with more structure than uniform noise
    for _ in range(30):
        model(x, labels)
    model.eval()
    mu, _ = model.cvae.encode(x, labels)
    _, z, z_log_var = model(x, labels)
    rows, columns = stats.grid_weights(labels)
    for i in range(5):
        c = int(labels[i])
        k = int(((mu[i] - stats.means()[c]) ** 2).sum(1).argmin())
        row, column = divmod(k, 5)
        row_middle = rows[i, :row].sum() + rows[i, row] / 2
        column_middle = columns[i, row, :column].sum() + columns[i, row, column] / 2
        assert torch.special.ndtr(z[i, 0]).item() == pytest.approx(row_middle.item(), abs=1e-5)
        assert torch.special.ndtr(z[i, 1]).item() == pytest.approx(column_middle.item(), abs=1e-5)
        mean, scale_tril = stats.component(torch.tensor([c]), torch.tensor([k]))
        expected = torch.linalg.solve(scale_tril[0], mu[i].double() - mean[0]) / 0.8
        assert torch.allclose(z[i, 2:].double(), expected, atol=1e-4)
    assert torch.isfinite(z_log_var).all()
    from tools.autograde.integrity import perturbed_codes
    moved = torch.from_numpy(perturbed_codes(z.detach().numpy(), np.random.default_rng(0)))

    def component(codes):
        row = submission.slice_of(codes[:, 0].double(), rows)
        return row * 5 + submission.slice_of(codes[:, 1].double(), columns[torch.arange(len(codes)), row])
    assert torch.equal(component(z.detach()), stats.nearest(mu, labels))
    assert (component(moved) != component(z.detach())).float().mean() < 0.02


def test_an_untrained_genmodel_draws_from_n01_at_its_spread_at_every_latent_dim():
    model = GenModel(latent_dim=4).eval()
    z = torch.randn(5, 4)
    expected = model.cvae.decode(0.8 * z[:, 2:], 2)
    assert torch.allclose(model.decode(z, 2), expected, atol=1e-5)
    # 1 or 2 numbers: no selectors, one Gaussian per class (said in one line), every number is style
    for latent_dim in (1, 2):
        with pytest.warns(UserWarning, match=f"latent_dim {latent_dim} leaves no numbers .* one Gaussian per class"):
            small = GenModel(latent_dim=latent_dim).eval()
        z = torch.randn(5, latent_dim)
        expected = small.cvae.decode(0.8 * z, 3)
        assert torch.allclose(small.decode(z, 3), expected, atol=1e-5)


@pytest.mark.parametrize("latent_dim", [1, 2])
def test_a_genmodel_of_one_or_two_numbers_keeps_one_gaussian_per_class_and_decodes_its_own_codes(latent_dim):
    torch.manual_seed(0)
    with pytest.warns(UserWarning):
        model = GenModel(latent_dim=latent_dim)
    x, labels = torch.rand(64, 1, 28, 28), torch.arange(64) % 10
    model.train()
    recon_x, mu, log_var = model(x, labels)
    assert mu.shape == log_var.shape == (64, latent_dim) and recon_x.shape[0] == 64
    assert model.code_statistics.count.shape == (10, 1)
    model.eval()
    with torch.no_grad():
        recon_x, mu, log_var = model(x, labels)
        assert mu.shape == (64, latent_dim) and torch.isfinite(log_var).all()
        assert torch.allclose(model.decode(mu, labels).reshape(recon_x.shape), recon_x, atol=1e-4)


@pytest.mark.parametrize("name", MODELS)
def test_decoding_the_eval_codes_gives_the_reconstruction(name):
    """What the autograder verifies: decode(mu, label) in another process reproduces forward's output."""
    model = MODELS[name]()
    model.train()
    for _ in range(3):  # move any running statistics away from their start
        model(*batch(32))
    model.eval()
    x, labels = batch()
    recon_x, mu, _ = model(x, labels)
    assert torch.allclose(model.decode(mu, labels).reshape(6, 28, 28), recon_x.reshape(6, 28, 28), atol=1e-6)


@pytest.mark.slow
def test_genmodel_needs_no_hook_of_our_trainer():
    """The reference answer stands alone: trained by a bare handout-style loop (forward, vae_loss,
    Adam) it samples as well as trained by the lab's Trainer with the same budget; both far better
    than the untrained model, which is what a prior only our Trainer fitted would have left."""
    import sys
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    import standalone
    torch.manual_seed(0)
    untrained = standalone.sample_fid(GenModel().eval())
    bare = standalone.sample_fid(standalone.handout_loop(epochs=1, limit=4000))
    ours = standalone.sample_fid(standalone.lab_trainer(epochs=1, limit=4000))
    assert bare < untrained / 2 and ours < untrained / 2
    assert abs(bare - ours) <= 0.15 * max(bare, ours) + 0.5, (bare, ours)
