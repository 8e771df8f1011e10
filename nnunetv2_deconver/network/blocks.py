"""Deconver's building blocks (paper Sec. III-D/E, Fig. 2): the Deconv mixer, the MLP and the block."""
from typing import Optional, Sequence, Tuple

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from nnunetv2_deconver.network.block_inference import channels_last_inference
from nnunetv2_deconver.network.block_recompute import regions, run_in_regions
from nnunetv2_deconver.network.pointwise import pointwise
from nnunetv2_deconver.ops import CONV, CONV_FN, INSTANCE_NORM, NDC, check_choice, compute_layout, memory_format_of, \
    to_layout

__all__ = ["DeconvMixer", "Mlp", "DeconverBlock", "MEMORY_MODES"]

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

    def forward(self, x: torch.Tensor, recomputed: bool = False) -> torch.Tensor:
        """The mixer's output. ``recomputed``: see :class:`NDC`."""
        return self.term(self.observe(x), None, recomputed).contiguous(memory_format=memory_format_of(x))

    def observe(self, x: torch.Tensor) -> torch.Tensor:
        """``h = relu(W_in x)``, the NDC's observed map, in the layout the update runs in.

        Where the NDC update runs channels-last (CPU), so does the whole mixer: one C-channel conversion in
        and one out instead of several of the R*C-channel source, its update and their gradients.
        """
        layout = compute_layout(x)
        return self.act(self.project_in(x if layout is None else to_layout(x, layout)))

    def term(self, observed: torch.Tensor, chunk: Optional[Tuple[int, int, int, int]] = None,
             recomputed: bool = False) -> torch.Tensor:
        """``W_out NDC(h) + b_out`` in ``h``'s layout; with ``chunk = (c0, c1, e0, e1)`` (whole NDC groups)
        the term that sources ``[e0, e1)`` contribute through ``W_out``, without the bias."""
        update = self.ndc(observed, chunk, recomputed)  # C -> R*C channels
        if chunk is None:
            return self.project_out(update)
        return CONV_FN[observed.dim() - 2](update, self.project_out.weight[:, chunk[2]:chunk[3]])

    def chunk_of(self, g0: int, g1: int) -> Tuple[int, int, int, int]:
        """NDC groups ``[g0, g1)`` as ``(c0, c1, e0, e1)``: their observed channels and sources."""
        per_group_c, per_group_e = self.ndc.filters.shape[0] // self.ndc.groups, self.ndc.filters.shape[1]
        return g0 * per_group_c, g1 * per_group_c, g0 * per_group_e, g1 * per_group_e


class Mlp(nn.Module):
    """Eq. (5): 1x1 C -> alpha*C, GELU, 1x1 alpha*C -> C (both with bias)."""

    def __init__(self, channels: int, dim: int, mlp_ratio: int = 4):
        super().__init__()
        hidden = mlp_ratio * channels
        self.fc1 = CONV[dim](channels, hidden, 1)
        self.act = nn.GELU()
        self.fc2 = CONV[dim](hidden, channels, 1)

    def forward(self, x: torch.Tensor, chunk: Optional[Tuple[int, int]] = None) -> torch.Tensor:
        """The MLP's output; with ``chunk = (a0, a1)`` the term of hidden channels ``[a0, a1)``, without
        ``fc2``'s bias. 1x1 convolutions as matrix products on the CPU's default-layout maps (network/pointwise.py)."""
        if chunk is None:
            return pointwise(self.act(pointwise(x, self.fc1.weight, self.fc1.bias)), self.fc2.weight, self.fc2.bias)
        a0, a1 = chunk
        hidden = self.act(pointwise(x, self.fc1.weight[a0:a1], self.fc1.bias[a0:a1]))
        return pointwise(hidden, self.fc2.weight[:, a0:a1])


MEMORY_MODES = ("regions", "block", "plain")


class DeconverBlock(nn.Module):
    """Eq. (4), pre-norm: ``z = x + mixer(norm(x)); y = z + mlp(norm(z))``.

    Norm is InstanceNorm without affine parameters; no layer scale, no drop path.

    ``memory`` says what a training forward keeps for backward (the values and gradients are the same):

    * ``"regions"`` (default): each half runs in checkpoint regions that keep only their input, ``x`` then
      ``z``, and are recomputed in backward one region at a time
      (:mod:`nnunetv2_deconver.network.block_recompute`): ``2 C`` values per voxel instead of 22 C (at R = alpha = 4);
    * ``"block"``: the whole block is one checkpoint that keeps only ``x`` (``C`` values per voxel) and runs
      at once in backward: less kept, a larger backward workspace;
    * ``"plain"``: plain autograd, which keeps everything (with the naive NDC, twice differentiable).

    Inference (no gradient recorded) keeps nothing in every mode: on the CPU the whole block runs
    channels-last (:mod:`nnunetv2_deconver.network.block_inference`), elsewhere the plain forward.
    """

    def __init__(self, channels: int, kernel_size: Sequence[int], ratio: int = 4, groups: int = None,
                 mlp_ratio: int = 4, eps: float = 1e-8, iterations: int = 1, memory: str = "regions"):
        super().__init__()
        check_choice(memory, MEMORY_MODES, "DeconverBlock memory")
        dim = len(kernel_size)
        self.memory = memory
        self.norm1 = INSTANCE_NORM[dim](channels, affine=False)
        self.mixer = DeconvMixer(channels, kernel_size, ratio, groups, eps, iterations)
        self.norm2 = INSTANCE_NORM[dim](channels, affine=False)
        self.mlp = Mlp(channels, dim, mlp_ratio)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not torch.is_grad_enabled():
            if compute_layout(x) is not None:  # the CPU, where the NDC runs channels-last
                return channels_last_inference(self, x)
            return self._forward(x)
        if self.memory == "plain":
            return self._forward(x)
        if self.memory == "block":
            return checkpoint(self._forward, x, True, use_reentrant=False)
        mixer, mlp = self.mixer, self.mlp
        mixer_regions = regions(x, mixer.ndc.groups, mixer.ndc.filters.shape[1], mixer.chunk_of)
        x = x + run_in_regions(self._mixer_head, self._mixer_term, mixer.project_out.bias, x, mixer_regions)
        mlp_regions = regions(x, mlp.fc1.out_channels, 1, lambda a0, a1: (a0, a1))
        return x + run_in_regions(self._mlp_head, mlp, mlp.fc2.bias, x, mlp_regions)

    def _mixer_head(self, x: torch.Tensor) -> torch.Tensor:
        return self.mixer.observe(self.norm1(x))

    def _mixer_term(self, observed: torch.Tensor, chunk) -> torch.Tensor:
        return self.mixer.term(observed, chunk, recomputed=True)

    def _mlp_head(self, z: torch.Tensor) -> torch.Tensor:
        return self.norm2(z)

    def _forward(self, x: torch.Tensor, recomputed: bool = False) -> torch.Tensor:
        x = x + self.mixer(self.norm1(x), recomputed=recomputed)
        return x + self.mlp(self.norm2(x))
