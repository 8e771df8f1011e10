"""Nonnegative deconvolution (NDC): the multiplicative update of the Deconver paper, eqs. (3) and (7).

The math lives in :func:`nonnegative_deconvolution`; :class:`NDC` is the learnable layer that holds the
initial-source projection and the filter.

Three implementations compute the same update (see ``IMPLEMENTATIONS``): the naive composition of
``conv``/``conv_transpose`` (the reference, twice differentiable), and the memory-lean custom autograd
function of :mod:`nnunetv2_deconver.ndc_autograd` in the inputs' layout (``"recompute"``) or in the
channels-last layout (``"channels_last"``). :func:`select_implementation` is the default dispatch;
:func:`force_implementation` overrides it, e.g. to run a whole network through one path.
"""
import math
import threading
from contextlib import contextmanager
from typing import Iterator, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from nnunetv2_deconver.ndc_autograd import _CHANNELS_LAST, _CONV, _CONV_T, RecomputedNDC, memory_format_of
from nnunetv2_deconver.precision import autocast_disabled

__all__ = ["nonnegative_deconvolution", "NDC", "IMPLEMENTATIONS", "CHANNELS_LAST_MIN_VOXELS", "NAIVE_2D_FROM",
           "select_implementation", "compute_layout", "force_implementation"]

IMPLEMENTATIONS = ("naive", "recompute", "channels_last")
_forced = threading.local()


def _check_shapes(x: torch.Tensor, source: torch.Tensor, filters: torch.Tensor, groups: int) -> Tuple[int, ...]:
    """Validate the three operands; return the filter's kernel size. Raises ValueError naming the sizes."""
    if x.dim() not in (3, 4, 5):
        raise ValueError(f"x must be (B, C, *spatial) with 1, 2 or 3 spatial dims, got shape {tuple(x.shape)}")
    if source.dim() != x.dim() or filters.dim() != x.dim():
        raise ValueError(f"x, source and filters must have the same number of dims, got shapes {tuple(x.shape)}, "
                         f"{tuple(source.shape)} and {tuple(filters.shape)}")
    b, c, *spatial = x.shape
    sb, e, *source_spatial = source.shape
    if sb != b or source_spatial != spatial:
        raise ValueError(f"source {tuple(source.shape)} must match x {tuple(x.shape)} in batch and spatial size")
    if groups < 1 or c % groups or e % groups:
        raise ValueError(f"groups={groups} must divide both the observed channels C={c} and the source channels E={e}")
    kernel = tuple(filters.shape[2:])
    if tuple(filters.shape[:2]) != (c, e // groups):
        raise ValueError(f"filters must have shape (C, E // groups, *kernel) = ({c}, {e // groups}, ...), "
                         f"got {tuple(filters.shape)}")
    if any(k % 2 == 0 for k in kernel):
        raise ValueError(f"the NDC filter needs an odd kernel size on every axis, got {kernel}")
    return kernel


# Smallest spatial size (voxels per sample) from which channels-last is faster than naive on the CPU
# at every channel count measured (benchmarks/ndc_layer.py --dispatch, docs/performance.md); below
# it the per-call costs of the layout change and of the oneDNN primitives dominate.
CHANNELS_LAST_MIN_VOXELS = {2: 8 ** 2, 3: 4 ** 3}
# 2D maps at least this wide (channels) and this large (voxels) run as fast in the default layout
# (naive / channels-last 0.89-1.10 measured at 512 channels, 64^2-128^2): they stay naive.
NAIVE_2D_FROM = (512, 64 ** 2)


def select_implementation(x: torch.Tensor, device_type: Optional[str] = None) -> str:
    """The default path for an observed map ``x`` (its shape and device; ``device_type`` overrides the latter).

    On the CPU: ``"channels_last"`` for 2D/3D maps of at least ``CHANNELS_LAST_MIN_VOXELS``, where the
    layer's forward+backward runs 1.05-4.3x faster than naive (at the first BraTS stage, 64^3: 2.0x with the
    operands in the default layout, 3.3x with them channels-last as the Deconv mixer passes them), except
    for the wide, large 2D maps of ``NAIVE_2D_FROM``; ``"naive"`` otherwise, where it is at least as
    fast and the memory is negligible. Elsewhere (GPU): ``"recompute"``, which runs the very kernels of
    the naive composition and keeps a third of its activations for backward. Inside
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
    return _CHANNELS_LAST.get(x.dim() - 2) if select_implementation(x) == "channels_last" else None


@contextmanager
def force_implementation(name: Optional[str]) -> Iterator[None]:
    """Within the block, ``implementation="auto"`` means ``name`` (``None`` restores the dispatch)."""
    if name is not None and name not in IMPLEMENTATIONS:
        raise ValueError(f"unknown NDC implementation {name!r}; choose one of {IMPLEMENTATIONS}")
    previous = getattr(_forced, "name", None)
    _forced.name = name
    try:
        yield
    finally:
        _forced.name = previous


def _naive_update(x: torch.Tensor, source: torch.Tensor, filters: torch.Tensor, groups: int, eps: float,
                  iterations: int, kernel: Tuple[int, ...]) -> torch.Tensor:
    """The update as a plain composition; autograd keeps every intermediate (about 18 activations' worth)."""
    padding = tuple(k // 2 for k in kernel)
    conv, conv_t = _CONV[len(kernel)], _CONV_T[len(kernel)]
    numerator = conv_t(x, filters, padding=padding, groups=groups) + eps
    for _ in range(iterations):
        reconstruction = conv(source, filters, padding=padding, groups=groups)  # K(S): E -> C
        source = source * numerator / (conv_t(reconstruction, filters, padding=padding, groups=groups) + eps)
    return source


def nonnegative_deconvolution(x: torch.Tensor, source: torch.Tensor, filters: torch.Tensor, groups: int,
                              eps: float = 1e-8, iterations: int = 1, implementation: str = "auto") -> torch.Tensor:
    """Refine a nonnegative source by the multiplicative NDC update (paper eq. 7, iterated as eq. 3).

    ``S_{t+1} = S_t * (A(x) + eps) / (A(K(S_t)) + eps)`` where ``K(S) = S * V`` is the grouped
    cross-correlation of eq. (1) (E -> C channels, zero padding ``k // 2``) and ``A`` its adjoint
    (C -> E, the transposed and flipped filter ``V^-``).

    Args:
        x: observed map ``(B, C, *spatial)``, nonnegative; 1, 2 or 3 spatial dims.
        source: initial source ``S0``, ``(B, E, *spatial)``, nonnegative, ``E`` divisible by ``groups``.
        filters: ``V``, ``(C, E // groups, *kernel)``, nonnegative, odd kernel size on every axis.
        groups: number of independent channel groups ``G``.
        eps: added to numerator and denominator.
        iterations: number of updates.
        implementation: ``"auto"`` (:func:`select_implementation`) or one of ``IMPLEMENTATIONS``; all
            give the same values up to float rounding, and only ``"naive"`` supports double backward.

    Returns:
        ``S^(iterations)``, ``(B, E, *spatial)``, float32 under autocast, else the inputs' dtype.
    """
    kernel = _check_shapes(x, source, filters, groups)
    if iterations < 1:
        raise ValueError(f"iterations must be >= 1, got {iterations}")
    if implementation == "auto":
        implementation = select_implementation(x)
    if implementation not in IMPLEMENTATIONS:
        raise ValueError(f"unknown NDC implementation {implementation!r}; choose 'auto' or one of {IMPLEMENTATIONS}")
    if implementation != "naive":
        layout = _CHANNELS_LAST.get(len(kernel)) if implementation == "channels_last" else None
        return RecomputedNDC.apply(x, source, filters, groups, eps, iterations, layout)
    # fp16 cannot hold eps and overflows in the ratio: the update always runs in (at least) fp32.
    with autocast_disabled(x.device.type):
        dtype = torch.promote_types(torch.promote_types(x.dtype, source.dtype), torch.float32)
        return _naive_update(x.to(dtype), source.to(dtype), filters.to(dtype), groups, eps, iterations, kernel)


class NDC(nn.Module):
    """Learnable NDC layer: ``S0 = relu(pointwise(x))`` (C -> R*C, with bias), then the update.

    The filter ``(C, R*C // G, *kernel)`` is initialised Kaiming-uniform like a conv weight and made
    nonnegative by ReLU at every forward. Input ``(B, C, *spatial)``, output ``(B, R*C, *spatial)``.
    """

    def __init__(self, channels: int, kernel_size: Sequence[int], ratio: int = 4, groups: int = None,
                 eps: float = 1e-8, iterations: int = 1):
        super().__init__()
        kernel_size = tuple(kernel_size)
        groups = channels if groups is None else groups
        source_channels = ratio * channels
        if len(kernel_size) not in (1, 2, 3) or any(k < 1 or k % 2 == 0 for k in kernel_size):
            raise ValueError(f"NDC supports odd kernel sizes in 1-3 dims only, got {kernel_size}")
        if groups < 1 or channels % groups:
            raise ValueError(f"NDC groups={groups} must divide the channel count {channels}")
        conv_op = {1: nn.Conv1d, 2: nn.Conv2d, 3: nn.Conv3d}[len(kernel_size)]
        self.groups, self.eps, self.iterations = groups, eps, iterations
        self.project = conv_op(channels, source_channels, 1, bias=True)
        self.filters = nn.Parameter(torch.empty(channels, source_channels // groups, *kernel_size))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        # The init torch uses for conv weights; the paper's "Kaiming uniform".
        nn.init.kaiming_uniform_(self.filters, a=math.sqrt(5))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        implementation = select_implementation(x)
        caller_layout = memory_format_of(x)
        layout = _CHANNELS_LAST.get(x.dim() - 2) if implementation == "channels_last" else None
        if layout is not None:
            # Converting the C-channel input once makes the projection emit S0 channels-last, which spares
            # the update (and its backward) three conversions of R*C-channel tensors.
            x = x.contiguous(memory_format=layout)
        source = F.relu(self.project(x))
        output = nonnegative_deconvolution(x, source, F.relu(self.filters), self.groups, self.eps, self.iterations,
                                           implementation)
        return output.contiguous(memory_format=caller_layout)  # a no-op when the caller is channels-last

    def extra_repr(self) -> str:
        return f"kernel_size={tuple(self.filters.shape[2:])}, groups={self.groups}, eps={self.eps}, " \
               f"iterations={self.iterations}"
