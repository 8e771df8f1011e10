"""Which NDC implementation runs where: the default dispatch, the thresholds it uses and a way to force one."""
import math
import threading
from contextlib import contextmanager
from typing import Iterator, Optional

import torch

from nnunetv2_deconver.ops.ndc_paths import PATHS

__all__ = ["IMPLEMENTATIONS", "CHANNELS_LAST_MIN_VOXELS", "NAIVE_2D_FROM", "select_implementation",
           "compute_layout", "force_implementation", "forced_implementation"]

IMPLEMENTATIONS = tuple(PATHS)  # the paths' names, in the table's order
_forced = threading.local()

# Smallest spatial size (voxels per sample) from which channels-last is faster than naive on the CPU
# at every channel count measured (benchmarks/ndc_layer.py --dispatch, docs/performance.md); below
# it the per-call costs of the layout change and of the oneDNN primitives dominate.
CHANNELS_LAST_MIN_VOXELS = {2: 8 ** 2, 3: 4 ** 3}
# 2D maps at least this wide (channels) and this large (voxels) run as fast in the default layout
# (measured parity, docs/performance.md): they stay naive.
NAIVE_2D_FROM = (512, 64 ** 2)


def select_implementation(x: torch.Tensor, device_type: Optional[str] = None) -> str:
    """The default path for an observed map ``x`` (its shape and device; ``device_type`` overrides the latter).

    On the CPU: ``"channels_last"`` for 2D/3D maps of at least ``CHANNELS_LAST_MIN_VOXELS``, where the
    layer's forward+backward runs faster than naive (docs/performance.md), except for the wide, large 2D
    maps of ``NAIVE_2D_FROM``; ``"naive"`` otherwise, where it is at least as fast and the memory is
    negligible. Elsewhere (GPU): ``"recompute"``, which runs the very kernels of
    the naive composition and keeps a third of its activations for backward; the fused ``"triton"``
    kernels are not chosen here until measured faster than it on a GPU (docs/gpu.md), and run only
    by name or through :func:`force_implementation`. Inside
    :func:`force_implementation` the forced path.
    """
    forced = getattr(_forced, "name", None)
    if forced is not None:
        return forced
    device_type = device_type or x.device.type
    dim = x.dim() - 2
    if device_type == "cpu":
        if dim not in CHANNELS_LAST_MIN_VOXELS:
            return "recompute"
        voxels = math.prod(x.shape[2:])
        if dim == 2 and x.shape[1] >= NAIVE_2D_FROM[0] and voxels >= NAIVE_2D_FROM[1]:
            return "naive"
        return "channels_last" if voxels >= CHANNELS_LAST_MIN_VOXELS[dim] else "naive"
    return "recompute"


def compute_layout(x: torch.Tensor) -> Optional[torch.memory_format]:
    """The memory format the default path computes the update of ``x`` in: channels-last or ``None`` (as given).

    A caller that already holds ``x`` in it (e.g. a whole Deconv mixer run channels-last) spares the
    layer its conversions.
    """
    return PATHS[select_implementation(x)].layout(x.dim() - 2)


def forced_implementation() -> Optional[str]:
    """The path forced by the enclosing :func:`force_implementation`, or ``None``."""
    return getattr(_forced, "name", None)


@contextmanager
def force_implementation(name: Optional[str]) -> Iterator[None]:
    """Within the block, ``implementation="auto"`` means ``name`` (``None`` restores the dispatch)."""
    if name is not None and name not in PATHS:
        raise ValueError(f"unknown NDC implementation {name!r}; choose one of {tuple(PATHS)}")
    previous = getattr(_forced, "name", None)
    _forced.name = name
    try:
        yield
    finally:
        _forced.name = previous
