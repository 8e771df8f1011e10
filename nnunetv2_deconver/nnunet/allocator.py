"""glibc malloc settings for a Deconver training process on the CPU: keep freed activation buffers for reuse.

glibc serves every allocation above its mmap threshold (128 KiB, raised dynamically up to 32 MiB) with a
fresh ``mmap`` and returns it to the OS on ``free``; a training step allocates and frees hundreds of
activation-sized buffers (tens to hundreds of MiB each), so each one is faulted in page by page again,
step after step, as system time. Raising the mmap threshold and the trim threshold to their maximum makes
glibc serve those buffers from its heap and keep the freed ones for the next allocation of the step.
Values are unaffected; the resident set then stays at the step's peak instead of shrinking between
steps (it would grow back in the next step anyway). Measured effect: docs/performance.md.

Inference allocates the same way (a sliding window runs the network once per tile), so the Deconver
trainers attach :func:`tune_on_first_cpu_forward` to every network they build: the settings are applied
when the network first runs on the CPU, in training and in ``nnUNetv2_predict -device cpu`` alike.
Processes that never run a Deconver network on the CPU keep glibc's defaults.
``NNUNET_DECONVER_MALLOC_TUNING=0`` opts out.
"""
import ctypes
import ctypes.util
import os
import sys

import torch

__all__ = ["keep_freed_memory_for_reuse", "tune_on_first_cpu_forward", "M_TRIM_THRESHOLD", "M_MMAP_THRESHOLD"]

M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # mallopt parameters, <malloc.h>
_LARGEST = 2 ** 31 - 1  # mallopt takes a C int


def keep_freed_memory_for_reuse(device: torch.device) -> bool:
    """On Linux/glibc and a CPU ``device``: set the mmap and trim thresholds to their maximum.

    Returns whether the settings were applied (False elsewhere, when opted out, or when glibc refused).
    """
    if torch.device(device).type != "cpu" or not sys.platform.startswith("linux"):
        return False
    if os.environ.get("NNUNET_DECONVER_MALLOC_TUNING", "1") == "0":
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # not glibc (e.g. musl): nothing to tune
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return bool(mallopt(M_MMAP_THRESHOLD, _LARGEST)) and bool(mallopt(M_TRIM_THRESHOLD, _LARGEST))


def tune_on_first_cpu_forward(network: torch.nn.Module) -> torch.nn.Module:
    """``network``, with a forward pre-hook that applies :func:`keep_freed_memory_for_reuse` the first time
    the network runs on a CPU tensor and then removes itself (nothing happens on a GPU)."""
    def hook(module, args):
        first = args[0] if args else None
        if isinstance(first, torch.Tensor) and first.device.type == "cpu":
            keep_freed_memory_for_reuse(first.device)
            handle.remove()

    handle = network.register_forward_pre_hook(hook)
    return network
