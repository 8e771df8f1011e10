"""Nonnegative deconvolution (NDC): the multiplicative update of the Deconver paper, eqs. (3) and (7).

The math lives in :func:`nonnegative_deconvolution`; :class:`NDC` is the learnable layer that holds the
initial-source projection and the filter.

Four implementations compute the same update (see ``IMPLEMENTATIONS``): the naive composition of
``conv``/``conv_transpose`` (the reference, twice differentiable), the memory-lean custom autograd
function of :mod:`nnunetv2_deconver.ops.ndc_autograd` in the inputs' layout (``"recompute"``) or in the
channels-last layout (``"channels_last"``), and the fused Triton kernels of
:mod:`nnunetv2_deconver.ops.ndc_triton` (``"triton"``, chosen by name only; see docs/gpu.md). :func:`select_implementation` is the default dispatch;
:func:`force_implementation` overrides it, e.g. to run a whole network through one path.
"""
import math
import numbers
from typing import Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from nnunetv2_deconver.ops.by_dimension import CHANNELS_LAST, CONV, CONV_FN
from nnunetv2_deconver.ops.ndc_autograd import Operators, RecomputedNDC, differentiable_operators, memory_format_of, update_step
from nnunetv2_deconver.ops.ndc_dispatch import IMPLEMENTATIONS, select_implementation
from nnunetv2_deconver.ops.ndc_triton import triton_deconvolution
from nnunetv2_deconver.ops.precision import autocast_disabled

__all__ = ["nonnegative_deconvolution", "plain_update", "NDC", "check_update_options"]

# True while torch.compile traces (torch >= 2.3); the value check would break the graph there
_compiling = getattr(torch.compiler, "is_compiling", lambda: False)

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


def _check_nonnegative(x: torch.Tensor, source: torch.Tensor, filters: torch.Tensor) -> None:
    """Raise ValueError naming the operands with a negative entry: one reduction each, one host sync."""
    operands = {"x": x, "source": source, "filters": filters}
    if x.device.type == "meta" or any(t.numel() == 0 for t in operands.values()):
        return
    minima = torch.stack([t.detach().amin().to(device=x.device, dtype=torch.float64) for t in operands.values()])
    negative = [f"{name} (min {m:g})" for name, m in zip(operands, minima.tolist()) if m < 0]
    if negative:
        raise ValueError(f"the NDC update is defined for nonnegative operands; {', '.join(negative)} negative: "
                         f"pass relu(...) of them, or check_nonnegative=False where negatives are intended")


def _positive_int(value) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool) and value >= 1


def check_update_options(eps: float, iterations: int, zero_eps_allowed: bool = False) -> None:
    """Raise ValueError unless ``eps`` is a finite number > 0 (>= 0 with ``zero_eps_allowed``) and
    ``iterations`` an integer >= 1.

    ``eps`` keeps the ratio of eq. (7) finite where a reconstruction is zero: a layer trained with 0 meets
    0/0 and its loss turns NaN. The function alone admits 0, the setting of Theorem 1, for strictly
    positive operands.
    """
    smallest_ok = (lambda e: e >= 0) if zero_eps_allowed else (lambda e: e > 0)
    if isinstance(eps, bool) or not isinstance(eps, numbers.Real) or not math.isfinite(eps) or not smallest_ok(eps):
        bound = ">= 0" if zero_eps_allowed else "> 0"
        raise ValueError(f"NDC eps must be a finite number {bound} (the paper's is 1e-8), got {eps!r}")
    if not _positive_int(iterations):
        raise ValueError(f"NDC iterations must be an integer >= 1, got {iterations!r}")


def plain_update(x: torch.Tensor, source: torch.Tensor, filters: torch.Tensor, groups: int, eps: float,
                 iterations: int, layout: Optional[torch.memory_format] = None) -> torch.Tensor:
    """The update (eqs. 3, 7) as plain differentiable operations; autograd keeps every intermediate.

    ``layout`` ``None`` is the naive composition of ``conv``/``conv_transpose`` in the operands' layout (the
    reference, twice differentiable); a channels-last format computes in it with the CPU's cheap forms of
    ``K`` and ``A`` and their cheap backward (:func:`~nnunetv2_deconver.ops.ndc_autograd.differentiable_operators`),
    for callers that recompute
    the update in backward themselves (a checkpoint region), where what autograd keeps is freed anyway.
    Runs in (at least) fp32, outside autocast: fp16 cannot hold eps and overflows in the ratio.
    """
    with autocast_disabled(x.device.type):
        dtype = torch.promote_types(torch.promote_types(x.dtype, source.dtype), torch.float32)
        prepare = Operators(filters, groups, dtype, layout).prepare
        correlate, adjoint = differentiable_operators(filters, groups, dtype, layout)
        adjoint_x = adjoint(prepare(x)[0])
        current = prepare(source)[0]
        for _ in range(iterations):
            if layout is None:
                current = current * (adjoint_x + eps) / (adjoint(correlate(current)) + eps)
            else:
                current = update_step(current, adjoint_x, adjoint(correlate(current)), eps)
        return current


def nonnegative_deconvolution(x: torch.Tensor, source: torch.Tensor, filters: torch.Tensor, groups: int,
                              eps: float = 1e-8, iterations: int = 1, implementation: str = "auto",
                              check_nonnegative: bool = True) -> torch.Tensor:
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
        check_nonnegative: raise ValueError if ``x``, ``source`` or ``filters`` has a negative entry (three
            reductions and one host sync per call; skipped while ``torch.compile`` traces). Callers that
            guarantee nonnegativity, such as :class:`NDC` (ReLU outputs), pass False.

    Returns:
        ``S^(iterations)``, ``(B, E, *spatial)``, in ``promote_types(x.dtype, source.dtype, float32)``:
        float32 for float16, bfloat16 and float32 inputs, float64 if ``x`` or ``source`` is float64;
        the same inside and outside autocast (the update always runs in at least fp32).

    Raises:
        ValueError: mismatched shapes, an even kernel, ``groups`` not dividing C and E, ``eps`` not finite
            and >= 0, ``iterations`` < 1, an unknown ``implementation``, or a negative operand.
    """
    kernel = _check_shapes(x, source, filters, groups)
    check_update_options(eps, iterations, zero_eps_allowed=True)
    if check_nonnegative and not _compiling():
        _check_nonnegative(x, source, filters)
    if implementation == "auto":
        implementation = select_implementation(x)
    if implementation not in IMPLEMENTATIONS:
        raise ValueError(f"unknown NDC implementation {implementation!r}; choose 'auto' or one of {IMPLEMENTATIONS}")
    if implementation == "triton":
        return triton_deconvolution(x, source, filters, groups, eps, iterations)
    if implementation != "naive":
        layout = CHANNELS_LAST.get(len(kernel)) if implementation == "channels_last" else None
        return RecomputedNDC.apply(x, source, filters, groups, eps, iterations, layout)
    return plain_update(x, source, filters, groups, eps, iterations)


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
        if not _positive_int(channels):
            raise ValueError(f"NDC channels must be an integer >= 1, got {channels!r}")
        if len(kernel_size) not in (1, 2, 3) or not all(_positive_int(k) and k % 2 for k in kernel_size):
            raise ValueError(f"NDC supports odd kernel sizes (integers) in 1-3 dims only, got {kernel_size}")
        if not _positive_int(groups) or channels % groups:
            raise ValueError(f"NDC groups={groups!r} must be an integer >= 1 dividing the channel count {channels}")
        if not _positive_int(ratio):
            raise ValueError(f"NDC ratio R must be an integer >= 1, got {ratio!r}")
        source_channels = ratio * channels
        check_update_options(eps, iterations)
        conv_op = CONV[len(kernel_size)]
        self.groups, self.eps, self.iterations = groups, eps, iterations
        self.project = conv_op(channels, source_channels, 1, bias=True)
        self.filters = nn.Parameter(torch.empty(channels, source_channels // groups, *kernel_size))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        # The init torch uses for conv weights; the paper's "Kaiming uniform".
        nn.init.kaiming_uniform_(self.filters, a=math.sqrt(5))

    def forward(self, x: torch.Tensor, chunk: Optional[Tuple[int, int, int, int]] = None,
                recomputed: bool = False) -> torch.Tensor:
        """The layer's output ``(B, R*C, *spatial)``, or with ``chunk = (c0, c1, e0, e1)`` (whole groups) its
        sources ``[e0, e1)``, which only the observed channels ``[c0, c1)`` of their groups reach.

        ``recomputed``: the caller runs this forward again in backward (a checkpoint region), so the
        memory-lean paths' custom functions give way to :func:`plain_update` in the same layout: what it keeps
        is freed with the region, and backward then need not recompute ``A(x)`` and ``A(K(S0))`` once more.
        """
        implementation = select_implementation(x)
        caller_layout = memory_format_of(x)
        layout = CHANNELS_LAST.get(x.dim() - 2) if implementation == "channels_last" else None
        if layout is not None:
            # Converting the C-channel input once makes the projection emit S0 channels-last, which spares
            # the update (and its backward) three conversions of R*C-channel tensors.
            x = x.contiguous(memory_format=layout)
        if chunk is None:
            observed, source, filters, groups = x, F.relu(self.project(x)), self.filters, self.groups
        else:
            c0, c1, e0, e1 = chunk
            source = F.relu(CONV_FN[x.dim() - 2](x, self.project.weight[e0:e1], self.project.bias[e0:e1]))
            observed, filters, groups = x[:, c0:c1], self.filters[c0:c1], self.groups * (c1 - c0) // x.shape[1]
        if recomputed and implementation in ("recompute", "channels_last"):
            output = plain_update(observed, source, F.relu(filters), groups, self.eps, self.iterations, layout)
        else:  # every operand is a ReLU output: the nonnegativity check would only cost a host sync per layer
            output = nonnegative_deconvolution(observed, source, F.relu(filters), groups, self.eps, self.iterations,
                                               implementation, check_nonnegative=False)
        return output.contiguous(memory_format=caller_layout)  # a no-op when the caller is channels-last

    def extra_repr(self) -> str:
        return f"kernel_size={tuple(self.filters.shape[2:])}, groups={self.groups}, eps={self.eps}, " \
               f"iterations={self.iterations}"
