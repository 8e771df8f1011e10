"""Nonnegative deconvolution (NDC): the multiplicative update of the Deconver paper, eqs. (3) and (7).

The math lives in :func:`nonnegative_deconvolution`; :class:`NDC` is the learnable layer that holds the
initial-source projection and the filter.

Several paths compute the same update, listed with what each supports in
:data:`~nnunetv2_deconver.ops.ndc_paths.PATHS`: the naive composition of ``conv``/``conv_transpose``
(the reference, twice differentiable), the memory-lean custom autograd function in the inputs' layout or
channels-last, and fused Triton kernels. :func:`~nnunetv2_deconver.ops.ndc_dispatch.select_implementation`
is the default dispatch; :func:`~nnunetv2_deconver.ops.ndc_dispatch.force_implementation` overrides it,
e.g. to run a whole network through one path.
"""
import math
from typing import Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from nnunetv2_deconver.ops.by_dimension import CONV, CONV_FN
from nnunetv2_deconver.ops.checks import check_integers, check_odd_kernel, check_update_options, is_integer
from nnunetv2_deconver.ops.layout import memory_format_of
from nnunetv2_deconver.ops.ndc_dispatch import select_implementation
from nnunetv2_deconver.ops.ndc_paths import PATHS

__all__ = ["nonnegative_deconvolution", "NDC"]

# True while torch.compile traces (torch >= 2.3); the value check would break the graph there
_compiling = getattr(torch.compiler, "is_compiling", lambda: False)

def _check_shapes(x: torch.Tensor, source: torch.Tensor, filters: torch.Tensor, groups: int) -> None:
    """Validate the three operands. Raises ValueError naming the sizes."""
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
    check_odd_kernel(kernel, "the NDC filter")


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
    _check_shapes(x, source, filters, groups)
    check_update_options(eps, iterations, zero_eps_allowed=True)
    if check_nonnegative and not _compiling():
        _check_nonnegative(x, source, filters)
    if implementation == "auto":
        implementation = select_implementation(x)
    if implementation not in PATHS:
        raise ValueError(f"unknown NDC implementation {implementation!r}; choose 'auto' or one of {tuple(PATHS)}")
    return PATHS[implementation](x, source, filters, groups, eps, iterations)


class NDC(nn.Module):
    """Learnable NDC layer: ``S0 = relu(pointwise(x))`` (C -> R*C, with bias), then the update.

    The filter ``(C, R*C // G, *kernel)`` is initialised Kaiming-uniform like a conv weight and made
    nonnegative by ReLU at every forward. Input ``(B, C, *spatial)``, output ``(B, R*C, *spatial)``.
    """

    def __init__(self, channels: int, kernel_size: Sequence[int], ratio: int = 4, groups: int = None,
                 eps: float = 1e-8, iterations: int = 1):
        super().__init__()
        groups = channels if groups is None else groups
        check_integers(channels, "NDC channels")
        kernel_size = check_odd_kernel(kernel_size, "the NDC filter")
        if not is_integer(groups) or groups < 1 or channels % groups:
            raise ValueError(f"NDC groups={groups!r} must be an integer >= 1 dividing the channel count {channels}")
        check_integers(ratio, "NDC ratio R")
        check_update_options(eps, iterations)
        source_channels = ratio * channels
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

        ``recomputed``: the caller runs this forward again in backward (a checkpoint region): the path's
        ``in_region`` form runs (:class:`~nnunetv2_deconver.ops.ndc_paths.NdcPath`).
        """
        path = PATHS[select_implementation(x)]
        caller_layout = memory_format_of(x)
        layout = path.layout(x.dim() - 2)
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
        # the operands are valid by construction (ReLU outputs of the layer's own shapes): no checks
        output = path(observed, source, F.relu(filters), groups, self.eps, self.iterations, in_region=recomputed)
        return output.contiguous(memory_format=caller_layout)  # a no-op when the caller is channels-last

    def extra_repr(self) -> str:
        return f"kernel_size={tuple(self.filters.shape[2:])}, groups={self.groups}, eps={self.eps}, " \
               f"iterations={self.iterations}"
