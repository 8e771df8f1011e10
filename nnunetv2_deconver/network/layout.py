"""A layout change whose gradient comes back in the input's layout; 1x1 convolutions suited to the layout.

``x.contiguous(memory_format=channels_last)`` hands its gradient back with channels-last strides. On the
CPU, InstanceNorm's backward given such a gradient for a single sample returns wrong values (torch 2.15;
batches of two or more are right), and a norm feeds the Deconv mixer, whose NDC runs channels-last.
:func:`to_layout` returns the gradient in the input's own layout instead: the same values, one copy.
"""
from typing import Optional

import torch

from nnunetv2_deconver.ops.by_dimension import CONV_FN
from nnunetv2_deconver.ops.ndc_autograd import memory_format_of

__all__ = ["to_layout", "pointwise"]


class _ToLayout(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, layout):
        ctx.layout = memory_format_of(x)
        return x.contiguous(memory_format=layout)

    @staticmethod
    def backward(ctx, grad):
        return grad.contiguous(memory_format=ctx.layout), None


def to_layout(x: torch.Tensor, layout: torch.memory_format) -> torch.Tensor:
    """``x`` in ``layout`` (``x`` itself if already so); its gradient is returned in ``x``'s layout."""
    if x.is_contiguous(memory_format=layout) or not x.requires_grad:
        return x.contiguous(memory_format=layout)
    return _ToLayout.apply(x, layout)


def _as_matrix_product(x: torch.Tensor) -> bool:
    # On the CPU oneDNN's 1x1 convolutions (forward and backward) run slower on maps in the default
    # layout than the same products as batched matrix products (docs/performance.md); channels-last maps
    # run as fast as convolutions and stay convolutions.
    return x.device.type == "cpu" and x.dim() > 2 and x.is_contiguous()


def pointwise(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor] = None) -> torch.Tensor:
    """A 1x1 convolution (stride 1) of ``x`` ``(B, Ci, *S)`` with ``weight`` ``(Co, Ci, 1, ...)``: a batched
    matrix product on the CPU for default-layout maps, a convolution otherwise. Differentiable."""
    if not _as_matrix_product(x):
        return CONV_FN[x.dim() - 2](x, weight, bias)
    matrix = weight.reshape(weight.shape[0], weight.shape[1])
    flat = x.reshape(x.shape[0], x.shape[1], -1)
    out = torch.matmul(matrix, flat) if bias is None else torch.baddbmm(
        bias.reshape(1, -1, 1), matrix.expand(x.shape[0], -1, -1), flat)
    return out.reshape(x.shape[0], matrix.shape[0], *x.shape[2:])
