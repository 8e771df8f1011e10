"""1x1 convolutions in the form that suits the input's layout on the CPU."""
from typing import Optional

import torch

from nnunetv2_deconver.ops import CONV_FN

__all__ = ["pointwise"]


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
