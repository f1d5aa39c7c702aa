"""Numerical checks of the derivations in docs/derivations.md.

Tests marked `derivation` check the mathematics of sections 0 and 1 themselves, with helpers
written in this file (no project code): `pytest -m derivation` runs them, `-m "not derivation"`
the ones that check submission.py against the derived formulas.

Every test is seeded and independent. Closed forms are compared with
`torch.distributions` and, separately, with Monte Carlo estimates; Monte Carlo
tolerances are a multiple of the estimated standard error std / sqrt(N), so a
wrong formula (off by far more than a few standard errors) fails while sampling
noise does not.
"""
import math
import pathlib
import sys

import numpy as np
import pytest
import torch
from torch.distributions import Independent, MultivariateNormal, Normal, kl_divergence

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

import submission  # noqa: E402

D_PIXELS = 28 * 28
MC_SIGMAS = 5.0  # Monte Carlo tolerance, in standard errors


# ----------------------------------------------------------------------------- helpers
def kl_discrete(p, q):
    """sum_x p log(p / q) with 0 log 0 = 0 and +inf where q = 0 < p."""
    p, q = np.asarray(p, dtype=np.float64), np.asarray(q, dtype=np.float64)
    support = p > 0
    if np.any(q[support] == 0):
        return math.inf
    return float(np.sum(p[support] * (np.log(p[support]) - np.log(q[support]))))


def kl_gauss_1d(m1, s1, m2, s2):
    """KL(N(m1, s1^2) || N(m2, s2^2)) as derived in section 0.1."""
    return math.log(s2 / s1) + (s1**2 + (m1 - m2) ** 2) / (2 * s2**2) - 0.5


def kl_diag_vs_standard(mu, sigma):
    """KL(N(mu, diag sigma^2) || N(0, I)) = sum_i 1/2 (-1 + s^2 + m^2 - log s^2)."""
    return (0.5 * (-1 + sigma**2 + mu**2 - torch.log(sigma**2))).sum(-1)


def kl_mvn_quadratic(m1, S1, m2, S2):
    """The quadratic term (m1 - m2)^T S2^-1 (m1 - m2)."""
    diff = m1 - m2
    return diff @ torch.linalg.solve(S2, diff)


def kl_mvn_corrected(m1, S1, m2, S2):
    """1/2 [log|S2|/|S1| + tr(S2^-1 S1) + (m1-m2)^T S2^-1 (m1-m2) - n]."""
    n = m1.shape[-1]
    logdet = torch.logdet(S2) - torch.logdet(S1)
    trace = torch.trace(torch.linalg.solve(S2, S1))
    return 0.5 * (logdet + trace + kl_mvn_quadratic(m1, S1, m2, S2) - n)


def kl_mvn_handout(m1, S1, m2, S2):
    """The handout's version: no 1/2 on the quadratic term."""
    n = m1.shape[-1]
    logdet = torch.logdet(S2) - torch.logdet(S1)
    trace = torch.trace(torch.linalg.solve(S2, S1))
    return 0.5 * logdet + 0.5 * trace + kl_mvn_quadratic(m1, S1, m2, S2) - 0.5 * n


def random_spd(n, generator):
    a = torch.randn(n, n, dtype=torch.float64, generator=generator)
    return a @ a.T + 0.5 * torch.eye(n, dtype=torch.float64)


def mc_mean_and_se(samples):
    samples = np.asarray(samples, dtype=np.float64)
    return samples.mean(), samples.std(ddof=1) / math.sqrt(len(samples))


# ----------------------------------------------------------------------------- 0.1: KL >= 0
@pytest.mark.derivation
def test_log_lemma_and_equality_only_at_one():
    x = np.concatenate([np.linspace(1e-6, 10.0, 100_001), [1.0]])
    gap = x - 1 - np.log(x)
    assert np.all(gap >= 0)
    assert gap[-1] == 0.0
    # away from x = 1 the gap is strictly positive (equality only at x = 1)
    assert np.all(gap[np.abs(x - 1) > 1e-3] > 0)


@pytest.mark.derivation
def test_kl_discrete_nonnegative_and_zero_only_when_equal():
    rng = np.random.default_rng(0)
    for _ in range(2000):
        k = int(rng.integers(2, 30))
        p = rng.dirichlet(np.full(k, rng.uniform(0.1, 3.0)))
        q = rng.dirichlet(np.full(k, rng.uniform(0.1, 3.0)))
        kl_pq = kl_discrete(p, q)
        assert kl_discrete(p, p) == pytest.approx(0.0, abs=1e-15)
        assert kl_pq > 0.0
        # strictly positive by a quantified amount: Pinsker, KL >= 1/2 ||p - q||_1^2
        assert kl_pq >= 0.5 * np.abs(p - q).sum() ** 2 - 1e-12
        # not symmetric in general, but both directions are non-negative
        assert kl_discrete(q, p) > 0.0


@pytest.mark.derivation
def test_kl_discrete_support_cases():
    rng = np.random.default_rng(1)
    for _ in range(200):
        k = 8
        p = rng.dirichlet(np.ones(k))
        p[:3] = 0.0
        p /= p.sum()  # p lives on {3..7}
        q = rng.dirichlet(np.ones(k))  # q has full support
        assert 0.0 < kl_discrete(p, q) < math.inf
        # q equal to p on the support of p but with extra mass elsewhere cannot exist
        # (total mass 1); q proportional to p on S with mass leaking outside gives KL > 0
        leak = 0.2
        q2 = (1 - leak) * p
        q2[:3] = leak / 3
        assert kl_discrete(p, q2) == pytest.approx(-math.log(1 - leak), rel=1e-12)
        # q = 0 where p > 0: infinite divergence
        q3 = q.copy()
        q3[5] = 0.0
        q3 /= q3.sum()
        assert kl_discrete(p, q3) == math.inf


# ----------------------------------------------------------------------------- 0.1: Gaussian KL
ONE_D_CASES = [(0.0, 1.0, 0.0, 1.0), (1.0, 1.0, 0.0, 1.0), (0.3, 0.5, -1.2, 2.0),
               (-2.0, 3.0, 0.5, 0.7), (0.0, 0.2, 0.0, 1.0)]


@pytest.mark.derivation
@pytest.mark.parametrize("m1,s1,m2,s2", ONE_D_CASES)
def test_gaussian_kl_1d_matches_torch(m1, s1, m2, s2):
    p = Normal(torch.tensor(m1, dtype=torch.float64), torch.tensor(s1, dtype=torch.float64))
    q = Normal(torch.tensor(m2, dtype=torch.float64), torch.tensor(s2, dtype=torch.float64))
    assert kl_gauss_1d(m1, s1, m2, s2) == pytest.approx(kl_divergence(p, q).item(), rel=1e-12, abs=1e-14)
    # the N(0, 1) special case used by the VAE
    if (m2, s2) == (0.0, 1.0):
        assert kl_gauss_1d(m1, s1, 0.0, 1.0) == pytest.approx(
            0.5 * (-1 + s1**2 + m1**2 - math.log(s1**2)), rel=1e-12, abs=1e-14)


@pytest.mark.derivation
def test_gaussian_kl_1d_matches_monte_carlo():
    # N = 400k draws: the standard error of the mean log-ratio is ~1e-3 or less here,
    # and we accept MC_SIGMAS standard errors.
    gen = torch.Generator().manual_seed(2)
    n = 400_000
    for m1, s1, m2, s2 in ONE_D_CASES[1:]:
        p = Normal(torch.tensor(m1, dtype=torch.float64), torch.tensor(s1, dtype=torch.float64))
        q = Normal(torch.tensor(m2, dtype=torch.float64), torch.tensor(s2, dtype=torch.float64))
        x = m1 + s1 * torch.randn(n, dtype=torch.float64, generator=gen)
        mean, se = mc_mean_and_se((p.log_prob(x) - q.log_prob(x)).numpy())
        closed = kl_gauss_1d(m1, s1, m2, s2)
        assert abs(mean - closed) < MC_SIGMAS * se, (m1, s1, m2, s2, mean, closed, se)
        # a formula missing the mean term would be far outside the band
        if m1 != m2:
            wrong = closed - (m1 - m2) ** 2 / (2 * s2**2)
            assert abs(mean - wrong) > MC_SIGMAS * se


@pytest.mark.derivation
def test_diagonal_gaussian_kl_matches_torch_and_monte_carlo():
    gen = torch.Generator().manual_seed(3)
    d = 8
    mu = torch.randn(d, dtype=torch.float64, generator=gen)
    sigma = torch.exp(0.5 * torch.randn(d, dtype=torch.float64, generator=gen))
    closed = kl_diag_vs_standard(mu, sigma).item()

    q = Independent(Normal(mu, sigma), 1)
    prior = Independent(Normal(torch.zeros(d, dtype=torch.float64), torch.ones(d, dtype=torch.float64)), 1)
    assert closed == pytest.approx(kl_divergence(q, prior).item(), rel=1e-12)
    full_q = MultivariateNormal(mu, torch.diag(sigma**2))
    full_prior = MultivariateNormal(torch.zeros(d, dtype=torch.float64), torch.eye(d, dtype=torch.float64))
    assert closed == pytest.approx(kl_divergence(full_q, full_prior).item(), rel=1e-10)

    n = 200_000
    z = mu + sigma * torch.randn(n, d, dtype=torch.float64, generator=gen)
    mean, se = mc_mean_and_se((q.log_prob(z) - prior.log_prob(z)).numpy())
    assert abs(mean - closed) < MC_SIGMAS * se
    assert se < 0.02  # the band is tight enough to mean something


# ----------------------------------------------------------------------------- 0.1: multivariate
@pytest.mark.derivation
@pytest.mark.parametrize("n", [1, 2, 3, 5])
def test_multivariate_kl_corrected_matches_torch(n):
    gen = torch.Generator().manual_seed(10 + n)
    for _ in range(20):
        m1 = torch.randn(n, dtype=torch.float64, generator=gen)
        m2 = torch.randn(n, dtype=torch.float64, generator=gen)
        S1, S2 = random_spd(n, gen), random_spd(n, gen)
        reference = kl_divergence(MultivariateNormal(m1, S1), MultivariateNormal(m2, S2)).item()
        assert kl_mvn_corrected(m1, S1, m2, S2).item() == pytest.approx(reference, rel=1e-9)


@pytest.mark.derivation
def test_multivariate_kl_matches_monte_carlo():
    gen = torch.Generator().manual_seed(4)
    n = 3
    m1, m2 = torch.randn(n, dtype=torch.float64, generator=gen), torch.randn(n, dtype=torch.float64, generator=gen)
    S1, S2 = random_spd(n, gen), random_spd(n, gen)
    p, q = MultivariateNormal(m1, S1), MultivariateNormal(m2, S2)
    x = m1 + torch.randn(200_000, n, dtype=torch.float64, generator=gen) @ torch.linalg.cholesky(S1).T
    mean, se = mc_mean_and_se((p.log_prob(x) - q.log_prob(x)).numpy())
    corrected = kl_mvn_corrected(m1, S1, m2, S2).item()
    handout = kl_mvn_handout(m1, S1, m2, S2).item()
    assert abs(mean - corrected) < MC_SIGMAS * se
    assert abs(mean - handout) > 20 * se


@pytest.mark.derivation
def test_handout_multivariate_kl_is_off_by_half_the_quadratic_term():
    gen = torch.Generator().manual_seed(5)
    for n in (1, 2, 4):
        m1, m2 = torch.randn(n, dtype=torch.float64, generator=gen), torch.randn(n, dtype=torch.float64, generator=gen)
        S1, S2 = random_spd(n, gen), random_spd(n, gen)
        reference = kl_divergence(MultivariateNormal(m1, S1), MultivariateNormal(m2, S2)).item()
        handout = kl_mvn_handout(m1, S1, m2, S2).item()
        quad = kl_mvn_quadratic(m1, S1, m2, S2).item()
        assert quad > 1e-3
        assert handout != pytest.approx(reference, rel=1e-3)
        assert handout - reference == pytest.approx(0.5 * quad, rel=1e-9)
        # with equal means the quadratic term vanishes and the two versions agree
        same_mean = kl_divergence(MultivariateNormal(m1, S1), MultivariateNormal(m1, S2)).item()
        assert kl_mvn_handout(m1, S1, m1, S2).item() == pytest.approx(same_mean, rel=1e-9)
    # the worked example of the docs: KL(N(1, 1) || N(0, 1)) = 1/2, the handout says 1
    one, zero, eye = torch.ones(1, dtype=torch.float64), torch.zeros(1, dtype=torch.float64), torch.eye(1, dtype=torch.float64)
    assert kl_mvn_corrected(one, eye, zero, eye).item() == pytest.approx(0.5)
    assert kl_mvn_handout(one, eye, zero, eye).item() == pytest.approx(1.0)


# ----------------------------------------------------------------------------- 0.2: ELBO and EM
@pytest.mark.derivation
def test_elbo_identity_on_discrete_latent_model():
    rng = np.random.default_rng(6)
    n_z, n_x = 5, 7
    prior = rng.dirichlet(np.ones(n_z))                       # p(z | theta)
    likelihood = rng.dirichlet(np.ones(n_x), size=n_z)        # p(x | z, theta), rows sum to 1
    for x in range(n_x):
        joint = prior * likelihood[:, x]                      # p(x, z | theta)
        log_px = math.log(joint.sum())                        # log p(x | theta)
        posterior = joint / joint.sum()                       # p(z | x, theta)
        for _ in range(50):
            q = rng.dirichlet(np.full(n_z, 0.5))
            elbo = float(np.sum(q * (np.log(joint) - np.log(q))))
            kl = kl_discrete(q, posterior)
            assert elbo + kl == pytest.approx(log_px, abs=1e-12)
            assert elbo < log_px  # a strict lower bound when q is not the posterior
        elbo_at_posterior = float(np.sum(posterior * (np.log(joint) - np.log(posterior))))
        assert elbo_at_posterior == pytest.approx(log_px, abs=1e-12)  # E-step makes it tight


def gmm_log_likelihood(x, w, m, s):
    comp = np.log(w) - np.log(s) - 0.5 * math.log(2 * math.pi) - 0.5 * ((x[:, None] - m) / s) ** 2
    top = comp.max(axis=1, keepdims=True)
    return float(np.sum(top[:, 0] + np.log(np.exp(comp - top).sum(axis=1)))), comp


@pytest.mark.derivation
def test_em_on_gaussian_mixture_never_lowers_likelihood():
    rng = np.random.default_rng(7)
    x = np.concatenate([rng.normal(-2.0, 0.7, 300), rng.normal(1.5, 1.2, 200)])
    w, m, s = np.array([0.5, 0.5]), np.array([0.1, 0.2]), np.array([3.0, 0.5])  # a poor start
    history = []
    for _ in range(30):
        log_lik, comp = gmm_log_likelihood(x, w, m, s)
        history.append(log_lik)
        # E-step: responsibilities q_j(z) = p(z | x_j, theta)
        resp = np.exp(comp - comp.max(axis=1, keepdims=True))
        resp /= resp.sum(axis=1, keepdims=True)
        # the bound is tight after the E-step: sum_j ELBO_j = log-likelihood
        elbo = float(np.sum(resp * (comp - np.log(resp))))
        assert elbo == pytest.approx(log_lik, rel=1e-12)
        # M-step: closed-form maximiser of E_q[log p(x, z | theta)]
        nk = resp.sum(axis=0)
        w = nk / len(x)
        m = (resp * x[:, None]).sum(axis=0) / nk
        s = np.sqrt((resp * (x[:, None] - m) ** 2).sum(axis=0) / nk)
    history.append(gmm_log_likelihood(x, w, m, s)[0])
    steps = np.diff(history)
    assert np.all(steps >= -1e-9 * np.abs(history[:-1])), steps.min()
    assert history[-1] > history[0] + 10.0  # EM actually made progress
    assert sorted(m.tolist()) == pytest.approx([-2.0, 1.5], abs=0.35)


# ----------------------------------------------------------------------------- 1.3: KL and MLE
@pytest.mark.derivation
def test_min_kl_to_data_is_max_expected_log_likelihood():
    rng = np.random.default_rng(8)
    p_data = rng.dirichlet(np.ones(6))
    entropy = -float(np.sum(p_data * np.log(p_data)))
    logits = rng.normal(size=(500, 6)) * 2                     # 500 candidate thetas
    p_theta = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    kls = np.array([kl_discrete(p_data, pt) for pt in p_theta])
    expected_ll = (p_data * np.log(p_theta)).sum(axis=1)
    # KL = -H(p_data) - E[log p_theta]: they differ by a theta-independent constant
    np.testing.assert_allclose(kls + expected_ll, -entropy, rtol=0, atol=1e-12)
    assert np.argmin(kls) == np.argmax(expected_ll)


# ----------------------------------------------------------------------------- 1.5: submission.py
def test_vae_loss_kl_term_equals_closed_form():
    gen = torch.Generator().manual_seed(9)
    batch, d = 16, 8
    mu = torch.randn(batch, d, dtype=torch.float64, generator=gen) * 1.5
    log_var = torch.randn(batch, d, dtype=torch.float64, generator=gen)
    x = torch.rand(batch, 1, 28, 28, dtype=torch.float64, generator=gen)
    recon_x = x.reshape(batch, 28, 28).clone()  # different shape, same pixels: no reconstruction error
    loss = submission.vae_loss(recon_x, x, mu, log_var, var=0.5)
    sigma = torch.exp(0.5 * log_var)
    reference = kl_divergence(Normal(mu, sigma), Normal(torch.zeros_like(mu), torch.ones_like(mu))).sum(-1).mean()
    assert loss.shape == ()
    assert loss.item() == pytest.approx(reference.item(), rel=1e-12)
    assert loss.item() == pytest.approx(kl_diag_vs_standard(mu, sigma).mean().item(), rel=1e-12)


@pytest.mark.parametrize("x_shape", [(4, 1, 28, 28), (4, 28, 28)])
def test_vae_loss_is_negative_elbo_minus_the_dropped_constant(x_shape):
    torch.manual_seed(11)
    model = submission.VAE(latent_dim=8).double().eval()  # eval: z = posterior mean
    x = torch.rand(*x_shape, dtype=torch.float64)
    with torch.no_grad():
        recon_x, mu, log_var = model(x)
        z = model.reparameterize(mu, log_var)
        assert torch.equal(z, mu)
        decoder_mean = model.decode(z).reshape(len(x), -1)
    torch.testing.assert_close(recon_x.reshape(len(x), -1), decoder_mean)
    posterior = Normal(mu, torch.exp(0.5 * log_var))
    prior = Normal(torch.zeros_like(mu), torch.ones_like(mu))
    kl = kl_divergence(posterior, prior).sum(-1)
    offsets = []
    for var in (0.01, 0.1, 0.5, 1.0, 2.0):
        decoder = Normal(decoder_mean, math.sqrt(var))
        neg_elbo = (-decoder.log_prob(x.reshape(len(x), -1)).sum(-1) + kl).mean()
        loss = submission.vae_loss(recon_x, x, mu, log_var, var=var)
        offset = (neg_elbo - loss).item()
        assert offset == pytest.approx(D_PIXELS / 2 * math.log(2 * math.pi * var), rel=1e-10, abs=1e-9)
        offsets.append(offset)
    # the dropped constant depends on var (so losses at different var are not comparable)
    assert len(set(round(o, 6) for o in offsets)) == len(offsets)


def test_vae_loss_reconstruction_term_scales_with_var():
    gen = torch.Generator().manual_seed(12)
    batch = 6
    x = torch.rand(batch, 1, 28, 28, dtype=torch.float64, generator=gen)
    recon_x = torch.rand(batch, 28, 28, dtype=torch.float64, generator=gen)
    mu = torch.zeros(batch, 4, dtype=torch.float64)
    log_var = torch.zeros(batch, 4, dtype=torch.float64)  # KL term is exactly 0
    sq_err = ((x.reshape(batch, -1) - recon_x.reshape(batch, -1)) ** 2).sum(-1).mean()
    for var in (0.05, 0.5, 3.0):
        loss = submission.vae_loss(recon_x, x, mu, log_var, var=var)
        assert loss.item() == pytest.approx((sq_err / (2 * var)).item(), rel=1e-12)


# ----------------------------------------------------------------------------- 1.5: reparameterisation
def test_reparameterize_sample_and_gradients():
    model = submission.VAE(latent_dim=4).double().train()
    mu = torch.tensor([[0.5, -1.0, 2.0, 0.0]], dtype=torch.float64, requires_grad=True)
    log_var = torch.tensor([[0.0, -1.0, 0.7, -3.0]], dtype=torch.float64, requires_grad=True)
    torch.manual_seed(13)
    z = model.reparameterize(mu, log_var)
    torch.manual_seed(13)
    eps = torch.randn_like(mu)
    sigma = torch.exp(0.5 * log_var.detach())
    torch.testing.assert_close(z.detach(), mu.detach() + sigma * eps)
    z.sum().backward()
    torch.testing.assert_close(mu.grad, torch.ones_like(mu))              # dz/dmu = 1
    torch.testing.assert_close(log_var.grad, 0.5 * eps * sigma)           # dz/dlog_var = eps sigma / 2
    assert torch.all(log_var.grad != 0)  # gradients do reach log_var

    # z has the distribution N(mu, sigma^2): check mean and std on many draws
    n = 100_000
    torch.manual_seed(14)
    zs = model.reparameterize(mu.detach().expand(n, -1), log_var.detach().expand(n, -1))
    se_mean = sigma / math.sqrt(n)
    assert torch.all((zs.mean(0) - mu.detach()).abs() < MC_SIGMAS * se_mean)
    se_std = sigma / math.sqrt(2 * (n - 1))  # standard error of a Gaussian sample std
    assert torch.all((zs.std(0) - sigma).abs() < MC_SIGMAS * se_std)


@pytest.mark.derivation
def test_reparameterised_gradient_example_is_unbiased():
    # f(z) = z^2, z = mu + sigma eps: E[f] = mu^2 + sigma^2, exact gradients 2 mu and 2 sigma.
    gen = torch.Generator().manual_seed(15)
    mu0, sigma0, n = 0.8, 1.3, 200_000
    mu = torch.tensor(mu0, dtype=torch.float64, requires_grad=True)
    sigma = torch.tensor(sigma0, dtype=torch.float64, requires_grad=True)
    eps = torch.randn(n, dtype=torch.float64, generator=gen)
    z = mu + sigma * eps
    per_sample_grads = torch.autograd.grad(z.pow(2).sum(), [mu, sigma])  # sums of per-sample gradients
    grad_mu_samples = 2 * (mu0 + sigma0 * eps)
    grad_sigma_samples = 2 * (mu0 + sigma0 * eps) * eps
    assert per_sample_grads[0].item() == pytest.approx(grad_mu_samples.sum().item(), rel=1e-10)
    assert per_sample_grads[1].item() == pytest.approx(grad_sigma_samples.sum().item(), rel=1e-10)
    mean_mu, se_mu = mc_mean_and_se(grad_mu_samples.numpy())
    mean_sigma, se_sigma = mc_mean_and_se(grad_sigma_samples.numpy())
    assert abs(mean_mu - 2 * mu0) < MC_SIGMAS * se_mu
    assert abs(mean_sigma - 2 * sigma0) < MC_SIGMAS * se_sigma


def test_reparameterize_is_deterministic_in_eval_mode():
    model = submission.VAE(latent_dim=3).eval()
    mu, log_var = torch.randn(5, 3), torch.randn(5, 3)
    assert torch.equal(model.reparameterize(mu, log_var), mu)


def test_the_derivations_table_quotes_submission_py_as_it_is():
    """docs/derivations.md maps each formula to a line of code: every line it quotes is in submission.py,
    in the function it names (a renamed layer once left the table quoting code that was gone)."""
    import ast
    import re
    root = pathlib.Path(__file__).resolve().parents[1]
    doc = (root / "docs" / "derivations.md").read_text()
    table = doc[doc.index("## From the formulas to `submission.py`"):].split("\n\n")[1]
    source = (root / "submission.py").read_text()
    functions = {}
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ClassDef):
            for item in node.body:
                if isinstance(item, ast.FunctionDef):
                    functions[f"{node.name}.{item.name}"] = ast.get_source_segment(source, item)
        elif isinstance(node, ast.FunctionDef) and node.col_offset == 0:
            functions[node.name] = ast.get_source_segment(source, node)
    rows = [line for line in table.splitlines() if line.startswith("| ") and "`" in line]
    assert len(rows) >= 9
    for row in rows:
        where, code = row.split(" | ")[1:3]
        function = functions[where.strip("`")]
        for quoted in re.findall(r"`([^`]+)`", code):
            assert quoted in function, (where, quoted)
