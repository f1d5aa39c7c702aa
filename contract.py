"""The handout's model contract: the only calls the lab's scripts make into a student's code.

    model = VAE(latent_dim=N)          GenModel(latent_dim=N)   (other arguments keep their defaults)
    recon_x, mu, log_var = model(x, labels)
        x float32 [B,1,28,28] in [0,1], labels int64 [B]; recon_x holds 784 values per image
        ([B,784], [B,28,28] or [B,1,28,28]) in [0,1]; mu and log_var are [B, latent_dim]
    images = model.decode(z, label)
        z [1, latent_dim], label a 0-dim int64 tensor, one sample at a time; any 784 values back
    loss = vae_loss(recon_x, x, mu, log_var, var)        a scalar tensor

Nothing else is required: no `encode`, no hook of our Trainer, no class of our solution. Every
script that runs student code (train.py through the Trainer, inference.py, evaluation.py, the
course kit's check and autograder) calls it through the functions below, so a submission that
ran in the handout's own harness runs here. `python contract.py` checks ./submission.py.
"""
import argparse
import importlib
import json
import os
import re
import sys
import traceback

import torch

from data_utils import IMAGE_PIXELS, IMAGE_SHAPE, NUM_CLASSES, LabError
from tasks import MODEL_CLASSES, TASK_RECORDS

# The handout's section a student writes first for each class: named when nothing is written yet.
FIRST_TODO = {"VAE": "section 2.2.1 (the layers of VAE.__init__)", "GenModel": "section 3 (GenModel.__init__)"}
FALLBACK_LATENT_DIM = 8
IMPORTED_LINE = "submission.py imported"  # printed once the import worked (the autograder looks for it)


class ContractError(LabError):
    """The submission breaks the handout's contract; the message names the call that failed."""


def one_line(error: BaseException, limit: int = 240) -> str:
    """'TypeError: message' on one line, cut to `limit` characters."""
    text = " ".join(str(error).split())
    line = f"{type(error).__name__}: {text}" if text else type(error).__name__
    return line if len(line) <= limit else line[:limit - 3] + "..."


# ------------------------------------------------------------------ the shapes the contract fixes, in words
def code_shape(batch: int, latent_dim) -> str:
    """mu's, log_var's and decode's z: '[8, 24]' ('[8, latent_dim]' where latent_dim is not known)."""
    return f"[{batch}, {latent_dim if latent_dim is not None else 'latent_dim'}]"


def built_with(latent_dim) -> str:
    return f" (the model was built with latent_dim={latent_dim})" if latent_dim is not None else ""


def images_shape(batch: int) -> str:
    return f"{batch} images of 784 values ([{batch}, 784], [{batch}, 28, 28] or [{batch}, 1, 28, 28])"


def shape_of(value) -> str:
    return str(list(value.shape)) if isinstance(value, torch.Tensor) else f"a {type(value).__name__}"


LAYER_WIDTHS = "check each layer's width against these"  # the fix, when forward or decode fails on a shape


def forward_contract(batch: int, latent_dim) -> str:
    return (f"mu and log_var {code_shape(batch, latent_dim)}{built_with(latent_dim)} and recon_x with {IMAGE_PIXELS} "
            f"values per image: {LAYER_WIDTHS}")


def decode_contract(batch: int, latent_dim) -> str:
    return (f"decode to take z {code_shape(batch, latent_dim)}{built_with(latent_dim)} and return {IMAGE_PIXELS} "
            f"values per image: {LAYER_WIDTHS}")


def loss_contract(x) -> str:
    return (f"vae_loss to take recon_x as forward returns it, beside x {shape_of(x)}, and return a scalar tensor: "
            f"reshape them alike before comparing them")


# torch's words for tensors whose shapes do not fit: "mat1 and mat2 shapes cannot be multiplied (8x48 and 24x256)",
# "The size of tensor a (48) must match the size of tensor b (24)", "shape '[-1, 784]' is invalid for input of
# size 3136", "Sizes of tensors must match except in dimension 1". Inside forward or decode the usual cause is a
# layer whose width does not fit latent_dim (or 784), which the harness cannot point at: it says where in the
# student's file the call failed and which shapes the contract fixes.
SHAPE_ERROR = re.compile(r"\bshapes?\b|\bsizes?\b|\bdimensions?\b|\bmat[12]\b", re.IGNORECASE)


def place_in_file_of(error: BaseException, owner) -> str:
    """'submission.py:57 (in Encoder.forward)': the innermost line of the error's traceback in the file that
    defines `owner` (the student's model class or vae_loss), or None if the error did not pass through it."""
    source = getattr(sys.modules.get(getattr(owner, "__module__", None)), "__file__", None)
    if not source:
        return None
    source, place = os.path.abspath(source), None
    for frame, line in traceback.walk_tb(error.__traceback__):  # outermost first
        code = frame.f_code
        if os.path.abspath(code.co_filename) == source:
            place = f"{os.path.basename(source)}:{line} (in {getattr(code, 'co_qualname', code.co_name)})"
    return place


def call_failed(what: str, error: BaseException, owner=None, contract: str = None, note: str = "") -> str:
    """The one line for a call into the student's code that raised: '{what} raised TypeError: ...{note}'. A shape
    error also says where in the student's file, and what the contract wants there:
    '{what} failed at submission.py:57 (in Encoder.forward): RuntimeError: mat1 and mat2 ...{note}; the contract
    wants mu and log_var [8, 24] ...'."""
    if owner is None or contract is None or not SHAPE_ERROR.search(str(error)):
        return f"{what} raised {one_line(error)}{note}"
    place = place_in_file_of(error, owner)
    return f"{what} failed{f' at {place}' if place else ''}: {one_line(error)}{note}; the contract wants {contract}"


def _call(what: str, function, owner=None, contract: str = None):
    try:
        return function()
    except ContractError:
        raise
    except Exception as error:
        raise ContractError(call_failed(what, error, owner, contract)) from error


def as_images(values, batch: int, what: str, name: str = "images") -> torch.Tensor:
    """Any 784 values per image -> float [batch, 28, 28]; a one-line ContractError otherwise."""
    if not isinstance(values, torch.Tensor):
        raise ContractError(f"{what} returned a {type(values).__name__}, expected a tensor of images")
    if values.numel() != batch * IMAGE_PIXELS or (values.dim() > 0 and values.shape[0] != batch and batch > 1):
        raise ContractError(f"{what} returned {name} of shape {list(values.shape)}, expected {images_shape(batch)}")
    if not values.is_floating_point():
        raise ContractError(f"{what} returned dtype {values.dtype}, expected floats in [0, 1]")
    return values.reshape(batch, *IMAGE_SHAPE)


# ------------------------------------------------------------------ building
def model_class(submission, task: str):
    class_name = TASK_RECORDS[task].model_class
    cls = getattr(submission, class_name, None)
    if not isinstance(cls, type):
        raise ContractError(f"submission.py defines no class {class_name} (task {task})")
    return cls


def build(cls, latent_dim: int) -> torch.nn.Module:
    """cls(latent_dim=N), the handout's only constructor call."""
    model = _call(f"{cls.__name__}(latent_dim={latent_dim})", lambda: cls(latent_dim=latent_dim))
    if not isinstance(model, torch.nn.Module):
        raise ContractError(f"{cls.__name__}(latent_dim={latent_dim}) is a {type(model).__name__}, "
                            f"not a torch.nn.Module")
    return model


def build_model(model_name: str, latent_dim: int) -> torch.nn.Module:
    """The model a checkpoint or --model names (a key of tasks.MODEL_CLASSES), built the handout's
    way: cls(latent_dim=N)."""
    if model_name not in MODEL_CLASSES:
        raise LabError(f"unknown model class {model_name!r}: expected one of {', '.join(MODEL_CLASSES)}")
    module_name, class_name = MODEL_CLASSES[model_name]
    try:
        module = importlib.import_module(module_name)
    except Exception as error:  # a student's file that fails to import: say so in one line
        raise LabError(f"cannot import {module_name}.py: {one_line(error)}") from None
    cls = getattr(module, class_name, None)
    if not isinstance(cls, type):
        raise ContractError(f"{module_name}.py defines no class {class_name}")
    return build(cls, latent_dim)


def require_parameters(model: torch.nn.Module) -> list:
    """The trainable parameters, or a one-line error naming the TODO to write first."""
    parameters = [p for p in model.parameters() if p.requires_grad]
    if not parameters:
        name = type(model).__name__
        todo = FIRST_TODO.get(name, f"{name}.__init__")
        raise ContractError(f"{name} has no trainable parameters, so there is nothing to train: "
                            f"write {todo} in submission.py first")
    return parameters


# ------------------------------------------------------------------ the calls
def forward(model, x: torch.Tensor, labels: torch.Tensor, latent_dim: int = None):
    """recon_x, mu, log_var = model(x, labels), checked; recon_x is returned as the model gave it."""
    what = f"{type(model).__name__}.forward(x [{', '.join(map(str, x.shape))}], labels [{len(labels)}])"
    batch = x.shape[0]
    outputs = _call(what, lambda: model(x, labels), type(model), forward_contract(batch, latent_dim))
    if not isinstance(outputs, (tuple, list)) or len(outputs) != 3:
        got = type(outputs).__name__ + (f" of length {len(outputs)}" if isinstance(outputs, (tuple, list)) else "")
        raise ContractError(f"{what} must return (recon_x, mu, log_var), got a {got}")
    recon_x, mu, log_var = outputs
    as_images(recon_x, batch, what, "recon_x")
    for name, value in (("mu", mu), ("log_var", log_var)):
        if not isinstance(value, torch.Tensor) or value.dim() != 2 or value.shape[0] != batch \
                or (latent_dim is not None and value.shape[1] != latent_dim):
            raise ContractError(f"{what} returned {name} of shape {shape_of(value)}, expected "
                                f"{code_shape(batch, latent_dim)}{built_with(latent_dim)}")
    return recon_x, mu, log_var


def reconstruct(model, x: torch.Tensor, labels: torch.Tensor, latent_dim: int = None):
    """(images float [B,28,28], mu, log_var) from forward, the handout's reconstruction."""
    recon_x, mu, log_var = forward(model, x, labels, latent_dim)
    return as_images(recon_x, x.shape[0], "forward").float(), mu, log_var


def _decode_one_by_one(model, z, labels, label_kind):
    """The handout's call: decode(z [1, D], label) per sample; label a 0-dim tensor (or an int)."""
    out = []
    for i in range(len(z)):
        label = labels[i] if label_kind == "tensor" else int(labels[i])
        out.append(as_images(model.decode(z[i:i + 1], label), 1, "decode"))
    return torch.cat(out)


class Decoder:
    """decode(z, labels) for a batch, the way this model supports it.

    The handout called decode(z [1, D], 0-dim label) one sample at a time. A batched call
    decode(z [B, D], labels [B]) is much faster, so it is used when it gives the same images as
    the handout's call on a few probe codes with different labels (a decoder written for one label
    can silently mix labels in a batch). A decoder that fails the handout's call but works batched
    is used batched; one written for a Python int gets ints. `mode` says which call is used."""

    MODES = ("batched", "tensor", "int")

    def __init__(self, model, latent_dim: int, probe_seed: int = 0):
        self.model, self.latent_dim = model, latent_dim
        name = type(model).__name__
        generator = torch.Generator().manual_seed(probe_seed)
        device = next((p.device for p in model.parameters()), torch.device("cpu"))
        z = torch.randn(3, latent_dim, generator=generator).to(device)
        labels = torch.tensor([1, 5, 8], device=device)
        results, errors = {}, {}
        with torch.no_grad():
            for mode in self.MODES:
                try:
                    results[mode] = self._run(mode, z, labels).float()
                    if not torch.isfinite(results[mode]).all():
                        raise ValueError("NaN or infinite values")
                except Exception as error:
                    errors[mode] = error
        handout = results.get("tensor", results.get("int"))
        if "batched" in results and (handout is None or torch.allclose(results["batched"], handout, atol=1e-4)):
            self.mode = "batched"
        elif "tensor" in results:
            self.mode = "tensor"
        elif "int" in results:
            self.mode = "int"
        else:
            batched = (f" (the batched call decode(z [3, {latent_dim}], labels [3]) raised "
                       f"{one_line(errors['batched'], 160)})")
            raise ContractError(call_failed(f"{name}.decode(z [1, {latent_dim}], label tensor(5))", errors["tensor"],
                                            type(model), decode_contract(1, latent_dim), note=batched))
        self.note = {"batched": "batched decode(z [B, D], labels [B])",
                     "tensor": "the handout's decode(z [1, D], 0-dim label), one sample at a time"
                               + (" (the batched call gave other images)" if "batched" in results else ""),
                     "int": "decode(z [1, D], int label), one sample at a time (the 0-dim tensor label failed)",
                     }[self.mode]
        # The lab is kinder than the handout's own inference.py, which made only the one-sample call:
        # say so, so that a student told "ok" here knows the original harness would have stopped.
        self.warning = None
        if "tensor" in errors:
            self.warning = (f"the handout's one-sample call {name}.decode(z [1, {latent_dim}], label tensor(5)) "
                            f"fails ({one_line(errors['tensor'], 160)}), so the original harness would stop there; "
                            f"this lab used {self.note}")

    def _run(self, mode, z, labels):
        if mode == "batched":
            return as_images(self.model.decode(z, labels), len(z), "decode")
        return _decode_one_by_one(self.model, z, labels, mode)

    @torch.no_grad()
    def __call__(self, z: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """float images [B, 28, 28] for codes z [B, D] and labels [B]."""
        what = f"{type(self.model).__name__}.decode ({self.note})"
        contract = decode_contract(len(z) if self.mode == "batched" else 1, self.latent_dim)
        return _call(what, lambda: self._run(self.mode, z, labels), type(self.model), contract).float()


def loss(vae_loss, recon_x, x, mu, log_var, var: float) -> torch.Tensor:
    what = (f"vae_loss(recon_x {shape_of(recon_x)}, x {shape_of(x)}, mu {shape_of(mu)}, log_var {shape_of(log_var)}, "
            f"var={var})")
    value = _call(what, lambda: vae_loss(recon_x, x, mu, log_var, var=var), vae_loss, loss_contract(x))
    if not isinstance(value, torch.Tensor) or value.dim() != 0:
        seen = list(value.shape) if isinstance(value, torch.Tensor) else type(value).__name__
        raise ContractError(f"vae_loss returned {seen}, expected a scalar tensor (the mean over the batch)")
    return value


def check_loss_direction(vae_loss, recon_shape, latent_dim: int, var: float = 0.5) -> None:
    """The handout's loss, the KL term plus the squared error over 2 var, rises as the reconstruction gets
    worse and as mu leaves 0 (a constant added to it, such as a Gaussian's normalisation, changes
    nothing). Checked on fixed tensors of the model's own shapes; ContractError names what is off: the
    sign, a missing KL term, a reconstruction term that does not count."""
    batch = recon_shape[0]
    x = torch.rand(batch, 1, *IMAGE_SHAPE, generator=torch.Generator().manual_seed(1))  # the global RNG untouched
    good, bad = x.reshape(recon_shape), (1 - x).reshape(recon_shape)
    zeros = torch.zeros(batch, latent_dim)

    def value(recon_x, mu):
        with torch.no_grad():
            return float(loss(vae_loss, recon_x, x, mu, zeros, var))
    perfect, worse, moved = value(good, zeros), value(bad, zeros), value(good, zeros + 1)
    said = f"({perfect:.4g} for recon_x = x and mu = 0, {worse:.4g} for recon_x = 1 - x, {moved:.4g} for mu = 1)"
    if worse < perfect and moved < perfect:
        raise ContractError(f"vae_loss falls as the reconstruction gets worse and as mu leaves 0 {said}: its sign is "
                            f"flipped; return the KL term plus the squared error over 2 var, not its negative")
    if not worse > perfect:
        raise ContractError(f"vae_loss does not rise when the reconstruction gets worse {said}: the reconstruction "
                            f"term is missing or of the wrong sign")
    if not moved > perfect:
        raise ContractError(f"vae_loss does not rise when mu leaves 0 {said}: the KL term is missing or of the "
                            f"wrong sign")


# ------------------------------------------------------------------ the check
def check(submission, task: str, latent_dim: int = None, batch: int = 8, strict_loss: bool = True) -> dict:
    """Everything the lab's scripts will call, once, on random digits-shaped inputs: build, one
    real Adam step through forward and vae_loss, forward in eval mode, decode. Returns
    {"latent_dim", "parameters", "decode"} or raises ContractError naming the failing call. A vae_loss that
    fails check_loss_direction fails the check, or with strict_loss=False is a "loss_warning" (the
    autograder grades what a loss trains, and says what it found)."""
    cls = model_class(submission, task)
    vae_loss = getattr(submission, "vae_loss", None)
    if not callable(vae_loss):
        raise ContractError("submission.py defines no function vae_loss")
    if latent_dim is None:
        latent_dim = default_latent_dim(cls) or FALLBACK_LATENT_DIM
    torch.manual_seed(0)
    model = build(cls, latent_dim)
    parameters = require_parameters(model)
    x = torch.rand(batch, 1, *IMAGE_SHAPE)
    labels = torch.arange(batch) % NUM_CLASSES
    model.train()
    optimizer = torch.optim.Adam(parameters, lr=1e-3)
    recon_x, mu, log_var = forward(model, x, labels, latent_dim)
    value = loss(vae_loss, recon_x, x, mu, log_var, var=0.5)
    if not torch.isfinite(value):
        raise ContractError(f"vae_loss returned {value.item()} on random images")
    _call("vae_loss(...).backward()", value.backward)
    if all(p.grad is None for p in parameters):
        raise ContractError(f"no gradient reaches {cls.__name__}'s parameters from vae_loss "
                            f"(is the graph detached, e.g. by .detach(), .item() or torch.no_grad()?)")
    _call("Adam step", optimizer.step)
    loss_warning = None
    try:
        check_loss_direction(vae_loss, tuple(recon_x.shape), mu.shape[1])
    except ContractError as error:
        if strict_loss:
            raise
        loss_warning = str(error)
    model.eval()
    with torch.no_grad():
        images, _, _ = reconstruct(model, x, labels, latent_dim)
        low, high = images.min().item(), images.max().item()
        if not torch.isfinite(images).all() or low < -1e-3 or high > 1 + 1e-3:
            raise ContractError(f"{cls.__name__}.forward returned reconstructions in [{low:.3g}, {high:.3g}], "
                                f"outside [0, 1] (end the decoder with a sigmoid)")
        decoder = Decoder(model, latent_dim)
        decoder(torch.randn(2, latent_dim), torch.tensor([0, 9]))
    return {"class": cls.__name__, "latent_dim": latent_dim, "parameters": sum(p.numel() for p in parameters),
            "decode": decoder.mode, "decode_warning": decoder.warning, "loss_warning": loss_warning}


def default_latent_dim(cls):
    """The latent_dim default of cls's constructor, or None if it has none (or not an int)."""
    import inspect
    try:
        parameter = inspect.signature(cls).parameters.get("latent_dim")
    except (TypeError, ValueError):
        return None
    default = None if parameter is None else parameter.default
    return default if isinstance(default, int) and not isinstance(default, bool) else None


def main(argv=None) -> int:
    from tasks import TASKS
    parser = argparse.ArgumentParser(allow_abbrev=False, description="Check ./submission.py against the handout's contract: the "
                                                 "calls train.py, inference.py and the autograder make.")
    parser.add_argument("--task", action="append", choices=TASKS, help="check only this task (repeatable)")
    parser.add_argument("--latent_dim", action="append", default=[], metavar="N or TASK=N",
                        help="latent_dim to build the models with (default: each class's own default, else "
                             f"{FALLBACK_LATENT_DIM})")
    parser.add_argument("--json", default=None, help="also write the result as JSON to this file")
    parser.add_argument("--traceback", action="store_true", help="print the traceback of a failure")
    parser.add_argument("--loss_as_warning", action="store_true",
                        help="a vae_loss of the wrong sign or without a term is a warning, not a failure (the "
                             "autograder's way: it grades what the loss trains)")
    args = parser.parse_args(argv)
    latent_dims = {}
    for item in args.latent_dim:
        task, _, number = item.rpartition("=")
        try:
            for name in ([task] if task else TASKS):
                latent_dims[name] = int(number)
        except ValueError:
            parser.error(f"--latent_dim {item}: give N or TASK=N with N an integer")
    result, failures = {"import": None, "tasks": {}}, []
    try:
        submission = importlib.import_module("submission")
    except BaseException as error:  # SyntaxError, SystemExit, anything at import time
        result["import"] = one_line(error)
        failures.append((f"import submission.py: {result['import']}", error))
    else:
        print(IMPORTED_LINE, flush=True)
        for task in args.task or TASKS:
            try:
                info = check(submission, task, latent_dims.get(task), strict_loss=not args.loss_as_warning)
                result["tasks"][task] = dict(info, ok=True)
                print(f"{task}: ok ({info['class']}, latent_dim {info['latent_dim']}, "
                      f"{info['parameters']:,} trainable parameters, decode: {info['decode']})")
                for warning in (info["decode_warning"], info["loss_warning"]):
                    if warning:
                        print(f"{task}: warning: {warning}")
            except BaseException as error:
                message = str(error) if isinstance(error, ContractError) else one_line(error)
                result["tasks"][task] = {"ok": False, "error": message}
                failures.append((f"{task}: {message}", error))
    for line, error in failures:
        print(line)
        if args.traceback:
            import traceback
            traceback.print_exception(type(error), error, error.__traceback__)
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(result, handle)
    if failures and not args.traceback:
        print("(run with --traceback to see where)")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
