"""Memory layouts: which one a tensor is in, and a layout change whose gradient keeps the input's layout.

``x.contiguous(memory_format=channels_last)`` hands its gradient back with channels-last strides. On the
CPU, InstanceNorm's backward given such a gradient for a single sample returns wrong values (torch 2.15;
batches of two or more are right), and a norm feeds the Deconv mixer, whose NDC runs channels-last.
:func:`to_layout` returns the gradient in the input's own layout instead: the same values, one copy.
"""
import torch

from nnunetv2_deconver.ops.by_dimension import CHANNELS_LAST

__all__ = ["memory_format_of", "to_layout"]


def memory_format_of(tensor: torch.Tensor) -> torch.memory_format:
    """The layout a tensor is dense in: channels-last (2D/3D) if it is, else the default layout."""
    channels_last = CHANNELS_LAST.get(tensor.dim() - 2)
    if channels_last is not None and not tensor.is_contiguous() and tensor.is_contiguous(memory_format=channels_last):
        return channels_last
    return torch.contiguous_format


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
