"""The autograder's integrity measures on their own, without a batch (tools/autograde/integrity.py, and the
decode phase's shuffle in tools/autograde/phases.py): known answers by hand, real digits and copies of them."""
import numpy as np
import pytest

from data_utils import load_split
from tools.autograde import integrity, phases


def test_copy_check_on_exact_noisy_and_shifted_copies():
    images, labels = load_split("valid")
    bank = integrity.ImageBank("valid", images[:3000])
    thresholds = integrity.copy_thresholds(images[3000:5000], labels[3000:5000], bank)
    # per label: half the 1st percentile of how near held-out digits of that label come; 1s come nearest
    zeros = images[3000:5000][labels[3000:5000] == 0][:integrity.COPY_HELD_OUT_PER_LABEL]
    assert thresholds[0] == pytest.approx(0.5 * np.percentile(integrity.nearest_real(zeros, [bank])[0], 1))
    assert thresholds[1] < 0.5 * min(thresholds[c] for c in range(10) if c != 1)
    rng = np.random.default_rng(0)
    real = np.concatenate([images[:3000][labels[:3000] == c][:10] for c in range(10)])  # 10 of each label, in order
    noisy = np.clip(real + rng.normal(0, 0.05 * 255, real.shape), 0, 255).round().astype(np.uint8)
    for copies in (real, noisy, integrity.shifted(real, 1, 0), integrity.shifted(real, -1, 1)):
        check = integrity.copy_check(copies.reshape(10, 10, 28, 28), [bank], thresholds)
        assert check["flagged"] and check["fraction"] >= 0.9, check["fraction"]
    blurred = np.full((10, 10, 28, 28), 30, np.uint8)  # a grey blob is nobody's digit
    assert not integrity.copy_check(blurred, [bank], thresholds)["flagged"]
    # held-out digits themselves, drawn as samples, are not copies: the thresholds sit below them
    held = np.concatenate([images[5000:][labels[5000:] == c][:10] for c in range(10)])
    assert integrity.copy_check(held.reshape(10, 10, 28, 28), [bank], thresholds)["fraction"] <= 0.02


def test_codes_are_moved_by_a_share_of_their_spread_and_the_drop_is_judged_by_hand():
    rng = np.random.default_rng(0)
    codes = (rng.standard_normal((4000, 3)) * np.array([1.0, 10.0, 1000.0])).astype(np.float32)
    moved = integrity.perturbed_codes(codes, np.random.default_rng(1))
    step = (moved - codes).std(axis=0) / codes.std(axis=0)
    assert moved.dtype == np.float32 and np.allclose(step, integrity.PERTURBATION, rtol=0.05)  # per number
    # Every number moves: a constant, and a number of tiny spread, by 0.05 x the draws' spread of 1.
    codes = np.stack([np.full(4000, 3.0), rng.standard_normal(4000) * 1e-3, rng.standard_normal(4000) * 2.0], 1)
    moved = integrity.perturbed_codes(codes.astype(np.float32), np.random.default_rng(1))
    step = (moved - codes).std(axis=0)
    assert np.allclose(step, [0.05, 0.05, 0.10], rtol=0.05)
    assert (moved[:, 0] != np.float32(3.0)).mean() > 0.99  # the constant no longer tags a row

    def scored(score):
        return {"score_uncapped": score, "ssim": 0.5, "mse": 0.02}
    assert not integrity.perturbation_check(scored(10.0), scored(9.75))["flagged"]    # 2.5 %: within the tolerance
    check = integrity.perturbation_check(scored(10.0), scored(9.6))                   # 4 %: past it
    assert check["flagged"] and check["relative_drop"] == pytest.approx(0.04)
    assert not integrity.perturbation_check(scored(0.2), scored(0.11))["flagged"]     # 45 %, but 0.09 points


def test_the_decode_phases_rows_are_shuffled_and_put_back():
    codes = np.arange(12, dtype=np.float32).reshape(4, 3)
    labels = np.array([3, 1, 4, 1])
    inputs = phases.decode_rows("Genwithlabel", codes, labels, b"secret one")
    verified, moved = inputs["verified"], inputs["moved"]
    # the two phases get the same shapes, the same multiset of labels, and no way to tell which is which
    assert verified["codes"].shape == moved["codes"].shape == (4 + 1000, 3)
    assert verified["labels"].dtype == moved["labels"].dtype == np.int64
    assert sorted(verified["labels"].tolist()) == sorted(moved["labels"].tolist())
    assert sum(any(np.array_equal(row, code) for code in codes) for row in verified["codes"]) == 4
    assert not any(np.array_equal(row, code) for row in moved["codes"] for code in codes)  # no original among them
    assert not np.array_equal(verified["codes"][verified["labels"] == 0], moved["codes"][moved["labels"] == 0])
    # a "decoder" that writes each row's label into its pixels shows where every row went
    for half in (verified, moved):
        decoded = np.broadcast_to(half["labels"][:, None, None], (len(half["labels"]), 28, 28)).astype(np.uint8)
        back = phases.split_decoded(decoded, half)
        assert back["perturbed"][:, 0, 0].tolist() == [3, 1, 4, 1]
        assert back["samples"].shape == (10, 100, 28, 28)
        assert all((back["samples"][c] == c).all() for c in range(10))
    again = phases.decode_rows("Genwithlabel", codes, labels, b"secret one")
    assert np.array_equal(again["moved"]["codes"], moved["codes"])  # reproducible from the grader's secret
    other = phases.decode_rows("Genwithlabel", codes, labels, b"secret two")
    assert not np.array_equal(other["moved"]["codes"], moved["codes"])  # and from nothing else
    assert not np.array_equal(other["moved"]["order"], moved["order"])
    assert phases.decode_rows("VAE0label", codes, labels, b"s")["moved"]["codes"].shape == (4, 3)  # no samples there


def test_legibility_reads_digits_as_their_label_and_noise_as_nothing():
    from classifier import load_classifier
    classifier, _ = load_classifier()
    images, labels = load_split("test")
    digits = np.stack([images[labels == c][:20] for c in range(10)])
    readable = integrity.legibility(digits, classifier)
    assert readable["overall"] >= 0.95 and not readable["flagged"]
    noise = np.random.default_rng(0).integers(0, 256, (10, 20, 28, 28), dtype=np.uint8)
    assert integrity.legibility(noise, classifier)["flagged"]


def test_the_whole_grade_is_bounded_by_decode():
    a = np.zeros((4, 28, 28), np.uint8)

    def scored(score, ssim=0.8, mse=0.02):
        return {"score_uncapped": score, "ssim": ssim, "mse": mse}
    assert not integrity.bound_by_decode(scored(10.0), scored(10.0), a, a)["flagged"]   # identical: honest
    assert not integrity.bound_by_decode(scored(9.0), scored(10.0), a, a)["flagged"]    # sampling in eval: worse
    assert not integrity.bound_by_decode(scored(10.29), scored(10.0), a, a)["flagged"]  # within 2% + 0.1
    assert integrity.bound_by_decode(scored(10.31), scored(10.0), a, a)["flagged"]
    assert not integrity.bound_by_decode(scored(0.08), scored(0.02), a, a)["flagged"]   # grades near 0: noise
    # the grey-corner forward: MSE nearly that of decode, SSIM far above it: the score sees both
    assert integrity.bound_by_decode(scored(8.3, ssim=0.90, mse=0.021), scored(3.0, ssim=0.30, mse=0.025),
                                     a, a)["flagged"]
