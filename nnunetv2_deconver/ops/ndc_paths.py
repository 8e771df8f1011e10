"""The NDC paths as one table: name -> the function that runs it, the layout it computes in, what it supports.

Every path computes the same update (eqs. 3, 7) up to float rounding. The dispatch
(:mod:`nnunetv2_deconver.ops.ndc_dispatch`), :func:`~nnunetv2_deconver.ops.ndc.nonnegative_deconvolution`,
the :class:`~nnunetv2_deconver.ops.ndc.NDC` layer and the blocks consult this table and nothing else:
adding a path is one entry here plus the module that implements it.
"""
from dataclasses import dataclass
from typing import Callable, Dict, Optional

import torch

from nnunetv2_deconver.ops.by_dimension import CHANNELS_LAST
from nnunetv2_deconver.ops.ndc_autograd import RecomputedNDC
from nnunetv2_deconver.ops.ndc_triton import triton_deconvolution
from nnunetv2_deconver.ops.ndc_update import plain_update

__all__ = ["NdcPath", "PATHS"]

# (x, source, filters, groups, eps, iterations, layout) -> S^(iterations)
Update = Callable[..., torch.Tensor]


@dataclass(frozen=True)
class NdcPath:
    """One way to compute the update.

    ``run`` takes ``(x, source, filters, groups, eps, iterations, layout)`` with ``layout`` from
    :meth:`layout`; ``in_region`` is what runs instead inside a checkpoint region, whose backward runs the
    forward again (there a path's own memory-lean backward would recompute the update a second time, so the
    lean paths give way to :func:`plain_update` in their layout: what it keeps is freed with the region).
    """

    name: str
    run: Update
    in_region: Update
    channels_last: bool  # computes 2D/3D maps in the channels-last layout
    twice_differentiable: bool
    summary: str

    def layout(self, spatial_dims: int) -> Optional[torch.memory_format]:
        """The memory format the path computes maps of ``spatial_dims`` axes in (``None``: as given)."""
        return CHANNELS_LAST.get(spatial_dims) if self.channels_last else None

    def __call__(self, x: torch.Tensor, source: torch.Tensor, filters: torch.Tensor, groups: int, eps: float,
                 iterations: int, in_region: bool = False) -> torch.Tensor:
        update = self.in_region if in_region else self.run
        return update(x, source, filters, groups, eps, iterations, self.layout(x.dim() - 2))


def _recomputed(x, source, filters, groups, eps, iterations, layout):
    return RecomputedNDC.apply(x, source, filters, groups, eps, iterations, layout)


def _triton(x, source, filters, groups, eps, iterations, _layout):
    return triton_deconvolution(x, source, filters, groups, eps, iterations)


PATHS: Dict[str, NdcPath] = {path.name: path for path in (
    NdcPath("naive", plain_update, plain_update, channels_last=False, twice_differentiable=True,
            summary="the composition of conv/conv_transpose in the operands' layout: the reference"),
    NdcPath("recompute", _recomputed, plain_update, channels_last=False, twice_differentiable=False,
            summary="custom autograd function that recomputes instead of storing (ops/ndc_autograd.py)"),
    NdcPath("channels_last", _recomputed, plain_update, channels_last=True, twice_differentiable=False,
            summary="the recompute function in the channels-last layout, the CPU's fast one"),
    NdcPath("triton", _triton, _triton, channels_last=False, twice_differentiable=False,
            summary="fused Triton kernels (ops/ndc_triton.py); chosen by name only (docs/gpu.md)"),
)}
