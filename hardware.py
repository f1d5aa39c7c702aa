"""The machine a script runs on: which device, which autocast precision, and the settings that
belong to the whole process (CPU threads, how malloc keeps freed memory).

The entry points (train.py, the autograder's phases, the benchmarks) call `configure_process`
once, before any training; the Trainer only asks `pick_device` and `pick_autocast_dtype`.
"""
import ctypes

import torch

from data_utils import LabError

PRECISIONS = ("auto", "fp32", "bf16")
# glibc's mallopt parameters (malloc.h) and the values keep_freed_memory gives them.
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
MMAP_THRESHOLD_BYTES = 32 << 20  # the largest glibc accepts on 64-bit
TRIM_THRESHOLD_BYTES = 1 << 30


def pick_device(name: str) -> torch.device:
    if name != "auto":
        try:
            device = torch.device(name)
        except RuntimeError:
            raise LabError(f"--device {name} is not a torch device: use auto, cpu, cuda, cuda:0 or mps") from None
        if device.type == "cuda" and not torch.cuda.is_available():
            raise LabError(f"--device {name}: this machine has no CUDA GPU; use --device auto or cpu")
        if device.type == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
            raise LabError(f"--device {name}: MPS is not available here; use --device auto or cpu")
        return device
    if torch.cuda.is_available():
        return torch.device("cuda")
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def has_fast_bf16(device: torch.device) -> bool:
    """AVX512-BF16 or AMX on a CPU, bf16 support on a CUDA GPU. Elsewhere bf16 runs, emulated,
    slower than fp32."""
    if device.type == "cpu":
        return bool(getattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False)()
                    or getattr(torch.cpu, "_is_amx_tile_supported", lambda: False)())
    return device.type == "cuda" and torch.cuda.is_bf16_supported()


def pick_autocast_dtype(precision: str, device: torch.device):
    """torch.bfloat16 for --precision bf16, and for auto where the hardware has fast bf16; None
    (plain fp32) otherwise."""
    if precision not in PRECISIONS:
        raise LabError(f"--precision {precision}: choose {', '.join(PRECISIONS)}")
    if precision == "bf16" or (precision == "auto" and has_fast_bf16(device)):
        return torch.bfloat16
    return None


def precision_name(autocast_dtype) -> str:
    """'bf16' or 'fp32': how a run's hyperparams.json and the autograder's table name it."""
    if autocast_dtype is None:
        return "fp32"
    return "bf16" if autocast_dtype == torch.bfloat16 else str(autocast_dtype).removeprefix("torch.")


def keep_freed_memory() -> bool:
    """Have glibc's malloc keep freed blocks for reuse instead of handing them back to the system.

    A CPU training step frees and reallocates the same few-megabyte activations every step. By
    default glibc maps each of them anew from the system, and touching a fresh mapping costs a
    page fault per 4 KiB: about 2,000 per step of the shipped VAE. With blocks under 32 MiB served
    from the heap, and a heap that is not trimmed, each step reuses warm memory instead
    (`python benchmarks/levers.py --allocator` measures both). The process keeps its peak memory
    until it exits, which is why only entry points call this. Returns False, changing nothing,
    where the C library has no mallopt (macOS, Windows, musl)."""
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError, TypeError):  # no C library to open (Windows: TypeError), or no mallopt
        return False
    mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
    results = [mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES), mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD_BYTES)]
    return results == [1, 1]  # mallopt answers 1 where it took the value


def configure_process(threads: int = 0) -> None:
    """The process-wide settings of a training process: `threads` torch CPU threads (0: torch's
    default, one per core) and malloc that keeps freed memory."""
    if threads < 0:
        raise LabError(f"--threads {threads} is negative: use 0 (torch's default) or a count")
    if threads:
        torch.set_num_threads(threads)
    keep_freed_memory()
