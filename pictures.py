"""The pictures inference.py writes beside its outputs: recon.png, samples.png,
interpolation.png, latent_map.png and a copy of the training's loss_curve.png.

They call the model only through the handout's contract (the codes and the decoder inference.py
already has), and none of them is graded: each is skipped, with one line, if it fails.
"""
import io
import textwrap
from pathlib import Path

import numpy as np
import torch

import contract
from data_utils import NUM_CLASSES, to_uint8
from outputs import tile
from tasks import TASK_RECORDS


def write_pictures(folder, data, recon, samples, codes, decoder, task, checkpoint_path) -> list:
    """The pictures; each extra beyond recon.png and samples.png is skipped, with one line, if it fails."""
    conditional = TASK_RECORDS[task].conditional
    shown = min(16, len(recon))
    originals = to_uint8(data.images[:shown].squeeze(1))
    pictures = {
        "recon.png": lambda: recon_picture(originals, recon[:shown]),
        "samples.png": lambda: samples_picture(samples[:, :10], conditional),
        "interpolation.png": lambda: interpolation_png(decoder, codes, data.labels, conditional),
        "latent_map.png": lambda: latent_map_png(codes, data.labels, task),
        "loss_curve.png": lambda: loss_curve_copy(checkpoint_path),
    }
    written = []
    for name, make in pictures.items():
        try:
            picture = make()
        except Exception as error:  # an extra never fails the run: recon/ and gen/ are what is graded
            print(f"skipped {name}: {contract.one_line(error, 160)}")
            continue
        if picture is not None:
            (Path(folder) / name).write_bytes(picture)
            written.append(name)
    return written


def labelled_grid(cells: np.ndarray, row_names, title: str, column_names=None) -> bytes:
    """uint8 cells [R, C, 28, 28] as a PNG with a name beside each row (and above each column)."""
    buffer = io.BytesIO()
    grid_figure(cells, row_names, title, column_names).savefig(buffer, format="png", dpi=110)
    return buffer.getvalue()


def grid_figure(cells: np.ndarray, row_names, title: str, column_names=None):
    from matplotlib.figure import Figure
    canvas = tile(cells)
    rows, columns = cells.shape[:2]
    width = 1.1 + 0.42 * columns
    # A title wider than a narrow grid is wrapped onto more lines (a 9-point character is about
    # 0.07 inch wide), and the figure grows by a line's height for each.
    title = textwrap.fill(title, width=int(width / 0.09))
    fig = Figure(figsize=(width, 0.6 + 0.42 * rows + 0.16 * title.count("\n")))
    ax = fig.subplots()
    ax.imshow(canvas, cmap="gray", vmin=0, vmax=255, interpolation="nearest")
    step = 28 + 2
    ax.set_yticks([2 + 14 + i * step for i in range(rows)], list(row_names), fontsize=8)
    if column_names is None:
        ax.set_xticks([])
    else:
        ax.xaxis.tick_top()
        ax.set_xticks([2 + 14 + j * step for j in range(columns)], list(column_names), fontsize=7)
    ax.tick_params(length=0)
    for spine in ax.spines.values():
        spine.set_visible(False)
    fig.suptitle(title, fontsize=9)  # centred on the figure, which is wider than the grid
    fig.tight_layout()
    return fig


def recon_picture(originals: np.ndarray, recon: np.ndarray) -> bytes:
    return labelled_grid(np.stack([originals, recon]), ["original", "reconstruction"],
                         f"the first {len(recon)} images of the split and their reconstructions",
                         column_names=[str(i) for i in range(len(recon))])


def samples_picture(samples: np.ndarray, conditional: bool) -> bytes:
    """Row c: decode(z ~ N(0, I), c); an unconditional model ignores c, so its rows are just more draws."""
    if conditional:
        return labelled_grid(samples, [f"label {c}" for c in range(len(samples))],
                             "decode(z ~ N(0, I), label): one row per label")
    return labelled_grid(samples, [f"draws {1 + i * samples.shape[1]}-{(i + 1) * samples.shape[1]}"
                                   for i in range(len(samples))],
                         "decode(z ~ N(0, I)): the label-free model ignores the label")


def interpolation_pairs(labels: np.ndarray, conditional: bool):
    """Ten (index a, index b) pairs of the split. A conditional model keeps the label fixed, so
    its rows join two different digits of one label (a change of style); an unconditional one
    joins the first digit of label c to the first of label c + 1."""
    first = {c: np.flatnonzero(labels == c) for c in range(NUM_CLASSES)}
    pairs = []
    for c in range(NUM_CLASSES):
        if conditional:
            if len(first[c]) >= 2:
                pairs.append((first[c][0], first[c][1]))
        elif len(first[c]) and len(first[(c + 1) % NUM_CLASSES]):
            pairs.append((first[c][0], first[(c + 1) % NUM_CLASSES][0]))
    return pairs


@torch.no_grad()
def interpolation_png(decoder, codes: torch.Tensor, labels: torch.Tensor, conditional: bool, steps: int = 8):
    """Each row decodes `steps` points on the straight line between the posterior means of two
    digits of the split (ends included). None when the split has no pair."""
    labels = torch.as_tensor(labels)
    pairs = interpolation_pairs(labels.numpy(), conditional)
    if not pairs:
        return None
    t = torch.linspace(0, 1, steps)[:, None]
    rows, names = [], []
    for a, b in pairs:
        z = (1 - t) * codes[a] + t * codes[b]
        rows.append(to_uint8(decoder(z, labels[a].expand(steps))))
        names.append(f"{int(labels[a])} -> {int(labels[b])}")
    what = "two digits of one label (the label fixed)" if conditional else "digits of two labels"
    return labelled_grid(np.stack(rows), names, f"decoding the line between the codes of {what}",
                         column_names=[f"{v:.2f}" for v in t.squeeze(1).tolist()])


def principal_components(codes: torch.Tensor, n: int = 2):
    """(coordinates [N, n], share of variance each explains) by SVD of the centred codes; each
    axis's sign is fixed (largest loading positive) so a picture does not flip between runs."""
    centred = codes.double() - codes.double().mean(dim=0)
    _, s, vh = torch.linalg.svd(centred, full_matrices=False)
    vh = vh[:n] * torch.sign(vh[:n].gather(1, vh[:n].abs().argmax(dim=1, keepdim=True)))
    coordinates = centred @ vh.T
    if coordinates.shape[1] < n:  # latent_dim 1
        coordinates = torch.cat([coordinates, torch.zeros(len(coordinates), n - coordinates.shape[1],
                                                          dtype=coordinates.dtype)], dim=1)
    share = (s ** 2 / (s ** 2).sum().clamp_min(1e-300))[:n].tolist()
    return coordinates.numpy(), share + [0.0] * (n - len(share))


def latent_map_png(codes: torch.Tensor, labels, task: str, map_num: int = 5000) -> bytes:
    """The posterior means (from forward) of the first `map_num` images on their two main axes."""
    from matplotlib.figure import Figure
    from matplotlib import colormaps
    num = min(map_num, len(codes))
    codes, labels = codes[:num], np.asarray(labels)[:num]
    coordinates, share = principal_components(codes)
    fig = Figure(figsize=(6, 6))
    ax = fig.subplots()
    colours = colormaps["tab10"]
    for c in range(NUM_CLASSES):
        points = coordinates[labels == c]
        ax.scatter(points[:, 0], points[:, 1], s=3, alpha=0.6, color=colours(c), label=str(c), rasterized=True)
    ax.set_xlabel(f"principal component 1 ({share[0]:.0%} of the variance)")
    ax.set_ylabel(f"principal component 2 ({share[1]:.0%})")
    title = f"{task}: posterior means of {num} images, PCA of {codes.shape[1]} dims"
    if TASK_RECORDS[task].conditional:
        title += "\n(the label is given to the model, so the code holds style, not class)"
    ax.set_title(title, fontsize=10)
    ax.legend(title="label", markerscale=4, fontsize=8, loc="best")
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100)
    return buffer.getvalue()


def run_folder_of(checkpoint_path) -> Path:
    """The run folder a checkpoint came from: its own folder for epoch_N.pth / interrupted.pth,
    NAME/ beside an exported NAME.pth."""
    path = Path(checkpoint_path)
    if path.name.startswith("epoch_") or path.name == "interrupted.pth":
        return path.parent
    return path.with_suffix("")


def loss_curve_copy(checkpoint_path):
    """The training's loss_curve.png when the checkpoint's run folder still has it, else None."""
    curve = run_folder_of(checkpoint_path) / "loss_curve.png"
    return curve.read_bytes() if curve.is_file() else None
