"""Evaluation a person can trust (classifier.py, evaluation.py, grade.py --extended, pictures.py).

  1. the committed classifier: small, safe to load, >= 99% on the test split
  2. classifier FID: ~0 for a set against itself, near its floor for fresh real digits,
     far above it for shuffled labels and for noised images
  3. likelihood: the density bookkeeping matches the training loss; the importance-weighted
     bound is below the negative ELBO and falls as k grows, on a briefly trained model
  4. pictures and grade.py --extended end to end, the lab's grade unchanged
"""
import json
import math
import shutil
import sys

import numpy as np
import pytest
import torch
from PIL import Image

import classifier as clf
import evaluation as ev
import grade
from conftest import run
from data_utils import ROOT, LabError, load_split
from submission import vae_loss
from checkpoint import load_checkpoint, model_from_checkpoint


@pytest.fixture(scope="module")
def classifier():
    return clf.load_classifier()


@pytest.fixture(scope="module")
def valid_features(classifier):
    images, labels = load_split("valid")
    features, _ = clf.classify(classifier[0], images)
    return images, labels, features


# ---------------------------------------------------------------- 1. the classifier
def test_classifier_is_small_safe_and_reads_real_test_digits(classifier):
    assert clf.CLASSIFIER_PATH.stat().st_size < 500_000
    saved = torch.load(clf.CLASSIFIER_PATH, map_location="cpu", weights_only=True)  # no pickled code
    assert saved["format"] == clf.CLASSIFIER_FORMAT and saved["valid_accuracy"] >= 0.99
    model, _ = classifier
    images, labels = load_split("test")
    _, predictions = clf.classify(model, images)
    assert (predictions == labels).mean() >= 0.99
    assert (predictions == labels).mean() == pytest.approx(saved["test_accuracy"], abs=2e-4)
    # label accuracy as grade.py --extended computes it, on real test digits in the role of samples
    metrics = ev.label_metrics(predictions, labels, "Genwithlabel")
    assert metrics["overall"] >= 0.99 and min(metrics["per_label"]) >= 0.97


def test_an_images_features_do_not_depend_on_the_rest_of_its_batch(classifier):
    """Generated samples are read one label at a time: a batch of one digit must be read as in any
    other batch (batch norm in eval mode, with its running statistics)."""
    images, labels = load_split("valid")
    ones = images[labels == 1][:40]
    mixed = np.concatenate([ones, images[labels != 1][:40]])
    alone, _ = clf.classify(classifier[0], ones)
    among_others, _ = clf.classify(classifier[0], mixed)
    assert np.allclose(alone, among_others[:40], atol=1e-5)


def test_a_damaged_classifier_is_refused_with_the_fix(tmp_path):
    bad = tmp_path / "classifier.pth"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(clf.LabError, match="python classifier.py"):
        clf.load_classifier(bad)
    torch.save({"format": "something else"}, bad)
    with pytest.raises(clf.LabError, match="not a classifier"):
        clf.load_classifier(bad)


# ---------------------------------------------------------------- 2. classifier FID
def test_frechet_distance_of_a_set_with_itself_is_zero(valid_features):
    _, _, features = valid_features
    assert ev.frechet_distance(features, features) == pytest.approx(0, abs=1e-6)
    # and it equals the closed form for two 1-D Gaussians: (m1 - m2)^2 + (s1 - s2)^2
    a = np.random.default_rng(0).normal(1.0, 2.0, (4000, 1))
    b = np.random.default_rng(1).normal(-1.0, 0.5, (4000, 1))
    expected = (a.mean() - b.mean()) ** 2 + (a.std(ddof=1) - b.std(ddof=1)) ** 2
    assert ev.frechet_distance(a, b) == pytest.approx(expected, rel=1e-9)


@pytest.mark.slow
def test_classifier_fid_is_near_its_floor_for_real_digits_and_far_for_wrong_ones(classifier, valid_features):
    images, labels, features = valid_features
    # 1000 validation digits play the generated set, the other 9000 the real one
    honest = images[:1000], labels[:1000]
    shuffled = honest[0], np.random.default_rng(0).permutation(honest[1])
    noise = np.random.default_rng(1).normal(0, 0.3, honest[0].shape)
    noised = np.clip(honest[0] / 255.0 + noise, 0, 1), honest[1]
    fids = {}
    for name, (gen_images, gen_labels) in {"honest": honest, "shuffled": shuffled, "noised": noised}.items():
        gen_features, _ = clf.classify(classifier[0], gen_images)
        fids[name] = ev.fid_metrics(features[1000:], labels[1000:], gen_features, gen_labels, "Genwithlabel")
    honest = fids["honest"]
    # unseen real digits read like the floor, which is made the same way (1000 real vs the rest)
    assert 0.5 * honest["overall_floor"] < honest["overall"] < 1.5 * honest["overall_floor"]
    assert 0.5 * honest["mean_per_label_floor"] < honest["mean_per_label"] < 1.5 * honest["mean_per_label_floor"]
    assert fids["shuffled"]["mean_per_label"] > 20 * honest["mean_per_label_floor"]
    assert fids["shuffled"]["overall"] < 2 * honest["overall_floor"]  # same images overall: labels matter per label
    assert fids["noised"]["overall"] > 20 * honest["overall_floor"]


def test_diversity_flags_a_collapsed_generator(valid_features):
    _, labels, features = valid_features
    collapsed = np.repeat(features[:1], 100, axis=0) + 1e-3 * np.random.default_rng(0).normal(size=(100, 64))
    honest = ev.diversity_metrics(features[1000:], labels[1000:], features[:1000], labels[:1000], "Genwithlabel")
    assert 0.95 < honest["overall_ratio"] < 1.05 and 0.9 < honest["min_per_label_ratio"]
    bad = ev.diversity_metrics(features, labels, collapsed, np.full(100, labels[0]), "VAE0label")
    assert bad["overall_ratio"] < 0.01


# ---------------------------------------------------------------- 3. likelihood
@pytest.fixture(scope="module")
def demo_model(tmp_path_factory, tiny_valid):
    """The demo MLP trained briefly (235 steps of 64 images, a few seconds on one core)."""
    base = tmp_path_factory.mktemp("demo")
    run("train.py", "--task", "VAE0label", "--model", "demo", "--latent_dim", 8, "--limit", 5000,
        "--epochs", 3, "--batch_size", 64, "--lr", 2e-3, "--var", 0.05, "--pred_step", 0,
        "--valid_data", tiny_valid, "--save_dir", base / "run", "--no-save_loss_plot")
    checkpoint = load_checkpoint(base / "run.pth")
    images, labels = load_split("test")
    return model_from_checkpoint(checkpoint).eval(), checkpoint["hyperparams"]["var"], images[:200], labels[:200]


@pytest.mark.slow
def test_negative_elbo_matches_the_training_loss(demo_model):
    """-ELBO = vae_loss (KL + ||x - recon||^2 / 2var, one draw of z) + 392 log(2 pi var), on average."""
    model, var, images, labels = demo_model
    log_w = ev.log_weights(model, images, labels, var, k=200, seed=0)
    x = clf.as_float_images(images)
    torch.manual_seed(0)
    with torch.no_grad():
        losses = []
        for _ in range(200):
            mu, log_var = model.encode(x)
            z = mu + torch.randn_like(mu) * torch.exp(0.5 * log_var)
            losses.append(vae_loss(model.decode(z), x, mu, log_var, var=var).item())
    expected = np.mean(losses) + 392 * math.log(2 * math.pi * var)
    assert ev.bounds(log_w, (1,))[1] == pytest.approx(expected, abs=0.5)


def test_iw_bound_is_tighter_than_the_elbo_and_falls_as_k_grows(demo_model):
    model, var, images, labels = demo_model
    log_w = ev.log_weights(model, images, labels, var, k=100, seed=0)
    nested = ev.bounds(log_w, (1, 10, 100))
    assert nested[1] > nested[10] > nested[100]
    assert nested[1] - nested[100] > 1.0  # nats per image: a real gap on a trained model
    # the same with independent draws for each k (no shared samples), 200 images
    fresh = {k: ev.bounds(ev.log_weights(model, images, labels, var, k=k, seed=k), (k,))[k] for k in (1, 10, 100)}
    assert fresh[1] > fresh[10] > fresh[100]
    assert ev.likelihood_ks(100) == [1, 5, 10, 50, 100]


# ---------------------------------------------------------------- 4. pictures and grade.py --extended
@pytest.fixture(scope="module")
def extended(trained, tiny_valid, tmp_path_factory):
    """inference.py on the tiny models of conftest, then grade.py --extended."""
    base = tmp_path_factory.mktemp("extended")
    for task, (_, checkpoint) in trained.items():
        run("inference.py", "--checkpoint_path", checkpoint, "--data_path", tiny_valid, "--save_dir", base / task)
    folders = ["--VAE0label_output_dir", base / "VAE0label", "--Genwithlabel_output_dir", base / "Genwithlabel"]
    extended = run("grade.py", *folders, "--result_path", base / "extended.json", "--extended",
                   "--extended_num", 60, "--extended_k", 50)
    return base, json.loads((base / "extended.json").read_text()), extended.stdout


# The smallest (width, height) that fits the cells at 1 px per pixel: 10 x 10 cells of 28 px for
# samples and interpolation (8 steps), 16 x 2 for recon.png; the plots as matplotlib draws them.
PICTURE_SIZES = {"samples.png": (300, 300), "recon.png": (480, 60), "interpolation.png": (240, 300),
                 "latent_map.png": (600, 600), "loss_curve.png": (700, 400)}


def test_inference_writes_every_picture(extended):
    base = extended[0]
    for task in ("VAE0label", "Genwithlabel"):
        for name, size in PICTURE_SIZES.items():
            with Image.open(base / task / name) as picture:
                assert picture.size[0] >= size[0] and picture.size[1] >= size[1], (task, name, picture.size)
        with Image.open(base / task / "interpolation.png") as picture:
            assert np.asarray(picture.convert("L")).std() > 10  # not blank


def test_every_grid_picture_fits_its_title():
    """The interpolation's title once ran off both edges of its 8-column grid."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.text import Text
    import pictures
    cells = np.zeros((10, 16, 28, 28), np.uint8)
    titles = ["decoding the line between the codes of two digits of one label (the label fixed)",
              "decode(z ~ N(0, I)): the label-free model ignores the label", "x" * 200]
    for columns in (1, 8, 16):
        for title in titles:
            figure = pictures.grid_figure(cells[:, :columns], [f"row {i}" for i in range(10)], title,
                                          column_names=[str(j) for j in range(columns)])
            renderer = FigureCanvasAgg(figure).get_renderer()
            drawn = next(text for text in figure.findobj(Text)
                         if "".join(text.get_text().split()) == "".join(title.split()))
            box, page = drawn.get_window_extent(renderer), figure.bbox
            assert page.x0 <= box.x0 and box.x1 <= page.x1 and box.y1 <= page.y1, (columns, title, box, page)


def test_grade_extended_adds_its_own_keys_and_keeps_the_lab_grade(extended):
    base, result, stdout = extended
    for task in ("VAE0label", "Genwithlabel"):
        lab = {key: value for key, value in result[task].items() if key not in ("extended", "seconds")}
        assert lab == json.loads(json.dumps(grade.grade_task(task, base / task)))  # as without --extended
        e = result[task]["extended"]
        assert {"classifier", "label_accuracy", "classifier_fid", "diversity", "likelihood", "pictures"} <= set(e)
        assert set(e["pictures"]) == set(PICTURE_SIZES)
        likelihood = e["likelihood"]
        assert likelihood["num_images"] == 60 and likelihood["k"] == 50 and likelihood["of"] == 200
        assert likelihood["iw_bound"] <= likelihood["neg_elbo"]
        assert e["classifier_fid"]["overall_floor"] > 0
    gen = result["Genwithlabel"]["extended"]
    assert len(gen["label_accuracy"]["per_label"]) == 10 and len(gen["classifier_fid"]["per_label_floor"]) == 10
    assert "overall" not in result["VAE0label"]["extended"]["label_accuracy"]  # unlabelled samples
    for words in ("label accuracy", "classifier FID", "floor", "diversity", "negative ELBO", "k=50", "pictures"):
        assert words in stdout


def test_grade_extended_names_a_missing_model(extended, tmp_path):
    base = extended[0]
    folder = tmp_path / "Genwithlabel"
    shutil.copytree(base / "Genwithlabel", folder)
    info = json.loads((folder / "hyperparams.json").read_text())
    info["checkpoint_path"] = str(tmp_path / "gone.pth")
    (folder / "hyperparams.json").write_text(json.dumps(info))
    result = run("grade.py", "--Genwithlabel_output_dir", folder, "--no-VAE0label", "--extended",
                 "--result_path", tmp_path / "g.json", check=False)
    assert result.returncode == 2 and "gone.pth" in result.stderr and "Traceback" not in result.stderr


def test_the_shipped_generator_draws_the_label_asked_for(classifier):
    """Row c of inference.py's samples, from the shipped checkpoint, read by the shipped classifier as c."""
    import contract
    import inference
    from tasks import default_checkpoint
    path = default_checkpoint("Genwithlabel")
    model = model_from_checkpoint(load_checkpoint(path), path).eval()
    decoder = contract.Decoder(model, latent_dim=model.latent_dim)
    samples = inference.generate(decoder, model.latent_dim, per_label=40, seed=1, device=torch.device("cpu"))
    assert samples.shape == (10, 40, 28, 28) and samples.dtype == np.uint8
    _, predictions = clf.classify(classifier[0], samples.reshape(-1, 28, 28))
    correct = predictions.reshape(10, 40) == np.arange(10)[:, None]
    assert correct.mean() >= 0.95 and correct.mean(axis=1).min() >= 0.8, correct.mean(axis=1)


def test_fake_samples_match_pixel_statistics_without_drawing_digits(extended, tmp_path):
    """tools/fake_samples.py: pixel-shuffle draws each pixel from that pixel's own training values
    of the label (so per-pixel means follow the real ones); collapse repeats one training image."""
    sys.path.insert(0, str(ROOT / "tools"))
    import fake_samples
    from data_utils import cal_fid
    source = extended[0] / "Genwithlabel"
    fake_samples.fake_samples(source, tmp_path / "shuffle", "pixel-shuffle", seed=0)
    fake_samples.fake_samples(source, tmp_path / "collapse", "collapse", seed=0)
    train_images, train_labels = load_split("train")
    for label in (0, 7):
        real = train_images[train_labels == label]
        shuffle = np.stack([np.asarray(Image.open(p)) for p in (tmp_path / "shuffle" / "gen" / str(label)).glob("*.png")])
        collapse = np.stack([np.asarray(Image.open(p)) for p in (tmp_path / "collapse" / "gen" / str(label)).glob("*.png")])
        assert len(shuffle) == len(collapse) == 100
        # every pixel value occurs at that pixel among the label's training images
        for row, col in ((14, 14), (10, 16), (20, 9)):
            assert set(shuffle[:, row, col]) <= set(real[:, row, col])
        assert (collapse == collapse[0]).all() and any((image == collapse[0]).all() for image in real)
        assert cal_fid(real / 255, shuffle / 255) < cal_fid(real / 255, collapse / 255) / 3
    assert json.loads((tmp_path / "shuffle" / "hyperparams.json").read_text()) == \
        json.loads((source / "hyperparams.json").read_text())
    with pytest.raises(LabError, match="exists"):
        fake_samples.fake_samples(source, tmp_path / "shuffle")
