"""Deconver's building blocks (paper Sec. III-D/E, Fig. 2): the Deconv mixer, the MLP and the block."""
from typing import Sequence

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from nnunetv2_deconver.ops.by_dimension import CONV, INSTANCE_NORM
from nnunetv2_deconver.ops.ndc import NDC
from nnunetv2_deconver.ops.ndc_dispatch import compute_layout, forced_implementation
from nnunetv2_deconver.network.layout import pointwise, to_layout
from nnunetv2_deconver.network.block_recompute import PreNormMixer, PreNormMlp, selective_recompute_applies
from nnunetv2_deconver.ops.ndc_autograd import memory_format_of

__all__ = ["DeconvMixer", "Mlp", "DeconverBlock"]

class DeconvMixer(nn.Module):
    """Eq. (6): 1x1 C -> C (no bias) -> ReLU -> NDC (C -> R*C) -> 1x1 R*C -> C (bias)."""

    def __init__(self, channels: int, kernel_size: Sequence[int], ratio: int = 4, groups: int = None,
                 eps: float = 1e-8, iterations: int = 1):
        super().__init__()
        conv = CONV[len(kernel_size)]
        self.project_in = conv(channels, channels, 1, bias=False)
        self.act = nn.ReLU()
        self.ndc = NDC(channels, kernel_size, ratio, groups, eps, iterations)
        self.project_out = conv(ratio * channels, channels, 1, bias=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Where the NDC update runs channels-last (CPU), so does the whole mixer: one C-channel conversion in
        # and one out instead of several of the R*C-channel source, its update and their gradients.
        layout = compute_layout(x)
        inner = x if layout is None else to_layout(x, layout)
        out = self.project_out(self.ndc(self.act(self.project_in(inner))))  # C -> C -> R*C -> C channels
        return out if layout is None else out.contiguous(memory_format=memory_format_of(x))


class Mlp(nn.Module):
    """Eq. (5): 1x1 C -> alpha*C, GELU, 1x1 alpha*C -> C (both with bias)."""

    def __init__(self, channels: int, dim: int, mlp_ratio: int = 4):
        super().__init__()
        hidden = mlp_ratio * channels
        self.fc1 = CONV[dim](channels, hidden, 1)
        self.act = nn.GELU()
        self.fc2 = CONV[dim](hidden, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # 1x1 convolutions as matrix products on the CPU's default-layout maps (network/layout.py)
        return pointwise(self.act(pointwise(x, self.fc1.weight, self.fc1.bias)), self.fc2.weight, self.fc2.bias)


class DeconverBlock(nn.Module):
    """Eq. (4), pre-norm: ``z = x + mixer(norm(x)); y = z + mlp(norm(z))``.

    Norm is InstanceNorm without affine parameters; no layer scale, no drop path.

    By default (``recompute = True``) a training forward runs each half, norm and mixer, norm and MLP,
    as one autograd function that keeps only its input (``x``, then ``z``) and recomputes the cheap rest
    in backward (:mod:`nnunetv2_deconver.network.block_recompute`): the same values and gradients, ``2 C``
    values per voxel saved instead of about 22 C. ``recompute = False`` is plain autograd (and, with the
    naive NDC forced, twice differentiable).

    With ``checkpoint = True`` a training forward keeps only the block's input for backward and runs the
    whole block again during backward (``torch.utils.checkpoint``): ``C`` values per voxel.
    """
    checkpoint = False
    recompute = True

    def __init__(self, channels: int, kernel_size: Sequence[int], ratio: int = 4, groups: int = None,
                 mlp_ratio: int = 4, eps: float = 1e-8, iterations: int = 1):
        super().__init__()
        dim = len(kernel_size)
        self.norm1 = INSTANCE_NORM[dim](channels, affine=False)
        self.mixer = DeconvMixer(channels, kernel_size, ratio, groups, eps, iterations)
        self.norm2 = INSTANCE_NORM[dim](channels, affine=False)
        self.mlp = Mlp(channels, dim, mlp_ratio)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.checkpoint and torch.is_grad_enabled():
            return checkpoint(self._forward, x, use_reentrant=False)
        if self.recompute and selective_recompute_applies(x, forced_implementation()):
            x = x + PreNormMixer.apply(x, self.norm1, self.mixer, *PreNormMixer.inputs_of(self.mixer))
            return x + PreNormMlp.apply(x, self.norm2, self.mlp, *PreNormMlp.inputs_of(self.mlp))
        return self._forward(x)

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.mixer(self.norm1(x))
        return x + self.mlp(self.norm2(x))
