"""The Deconver U-Net (paper Sec. III-C, Fig. 1), constructed from the topology of an nnU-Net plan."""
from typing import List, Optional, Sequence, Tuple, Type, Union

import numpy as np
import torch
from torch import nn

from nnunetv2_deconver.network.arguments import SPATIAL_DIMS, normalise, stride_divisor
from nnunetv2_deconver.network.blocks import DeconverBlock
from nnunetv2_deconver.ops import CHANNELS_LAST, CONV_TRANSPOSED, DeformableTransposedConv, memory_format_of

__all__ = ["Deconver", "DeconverEncoder", "DeconverDecoder", "stride_divisor"]

IntOrSeq = Union[int, Sequence[int]]

def _stage(blocks: int, channels: int, kernel: Tuple[int, ...], groups, block_kwargs: dict) -> List[nn.Module]:
    return [DeconverBlock(channels, kernel, groups=groups, **block_kwargs) for _ in range(blocks)]


class DeconverEncoder(nn.Module):
    """Stem (one conv, no bias) then, per further stage, a strided conv (kernel = stride, with bias).

    Each stage ends in ``n_blocks_per_stage`` Deconver blocks. ``forward`` returns every stage's
    output, highest resolution first (the skips).
    """

    def __init__(self, input_channels: int, features_per_stage: Sequence[int], conv_op: Type[nn.Module],
                 kernel_sizes: Sequence[Tuple[int, ...]], strides: Sequence[Tuple[int, ...]],
                 n_blocks_per_stage: Sequence[int], stem_kernel_size: Tuple[int, ...], groups: Sequence,
                 block_kwargs: dict):
        super().__init__()
        stem_padding = tuple(k // 2 for k in stem_kernel_size)
        stages = [nn.Sequential(conv_op(input_channels, features_per_stage[0], stem_kernel_size,
                                        padding=stem_padding, bias=False),
                                *_stage(n_blocks_per_stage[0], features_per_stage[0], kernel_sizes[0], groups[0],
                                        block_kwargs))]
        for s in range(1, len(features_per_stage)):
            stages.append(nn.Sequential(
                conv_op(features_per_stage[s - 1], features_per_stage[s], strides[s], stride=strides[s], bias=True),
                *_stage(n_blocks_per_stage[s], features_per_stage[s], kernel_sizes[s], groups[s], block_kwargs)))
        self.stages = nn.ModuleList(stages)

    def forward(self, x: torch.Tensor) -> List[torch.Tensor]:
        skips = []
        for stage in self.stages:
            x = stage(x)
            skips.append(x)
        return skips


class DeconverDecoder(nn.Module):
    """Per stage: transposed conv (kernel = stride) to the skip's width, concat ``[skip, up]``,
    1x1 conv 2C -> C (no bias), Deconver blocks; a 1x1 head (``seg_layers``) per stage.

    With ``deep_supervision`` the forward returns one logit map per decoder stage, highest
    resolution first (nnU-Net's convention); otherwise only the full-resolution map.
    With ``upsample="dtc"`` each transposed conv is the base of a :class:`DeformableTransposedConv`
    (keys ``transpconvs.{d}.base.*``, ``.features.*``, ``.coordinates.*``).
    """

    def __init__(self, features_per_stage: Sequence[int], conv_op: Type[nn.Module],
                 kernel_sizes: Sequence[Tuple[int, ...]], strides: Sequence[Tuple[int, ...]],
                 n_blocks_per_stage_decoder: Sequence[int], num_classes: int, deep_supervision: bool,
                 groups: Sequence, block_kwargs: dict, upsample: str = "transposed",
                 dtc_receptive_field: Optional[float] = 2.0):
        super().__init__()
        self.deep_supervision = deep_supervision
        transposed = CONV_TRANSPOSED[SPATIAL_DIMS[conv_op]]
        up, fuse, stages, heads = [], [], [], []
        # decoder stage d produces the resolution of encoder stage s = n_stages - 2 - d
        for d, s in enumerate(reversed(range(len(features_per_stage) - 1))):
            c_skip = features_per_stage[s]
            conv = transposed(features_per_stage[s + 1], c_skip, strides[s + 1], stride=strides[s + 1], bias=True)
            up.append(conv if upsample == "transposed" else
                      DeformableTransposedConv.wrap(conv, receptive_field=dtc_receptive_field))
            fuse.append(conv_op(2 * c_skip, c_skip, 1, bias=False))
            stages.append(nn.Sequential(*_stage(n_blocks_per_stage_decoder[d], c_skip, kernel_sizes[s], groups[s],
                                                block_kwargs)))
            heads.append(conv_op(c_skip, num_classes, 1, bias=True))
        self.transpconvs = nn.ModuleList(up)
        self.fuse = nn.ModuleList(fuse)
        self.stages = nn.ModuleList(stages)
        self.seg_layers = nn.ModuleList(heads)

    def forward(self, skips: List[torch.Tensor]) -> Union[torch.Tensor, List[torch.Tensor]]:
        x = skips[-1]
        outputs = []
        for d in range(len(self.stages)):
            skip = skips[-(d + 2)]
            x = self.transpconvs[d](x).contiguous(memory_format=memory_format_of(skip))  # one layout for the cat
            x = self.stages[d](self.fuse[d](torch.cat((skip, x), dim=1)))
            if self.deep_supervision:
                outputs.append(self.seg_layers[d](x))
        if not self.deep_supervision:
            return self.seg_layers[-1](x)
        return outputs[::-1]  # highest resolution first


@torch.compiler.disable
def _cpu_inference(network: "Deconver", x: torch.Tensor) -> Union[torch.Tensor, List[torch.Tensor]]:
    """CPU inference with every map channels-last, the layout the blocks run in (network/block_inference.py),
    so that no block, concatenation or convolution converts a map; the logits are returned as usual.
    ``torch.compile`` runs it as it is: the blocks' fused kernels are opaque to it, so a compiled graph
    would consist of the convolutions between them, split at every block."""
    out = network.decoder(network.encoder(x.contiguous(memory_format=CHANNELS_LAST[x.dim() - 2])))
    return [o.contiguous() for o in out] if isinstance(out, list) else out.contiguous()


class Deconver(nn.Module):
    """Deconver, built from an nnU-Net plan's topology.

    Args:
        input_channels, num_classes: as nnU-Net passes them.
        n_stages: resolution stages (encoder depth L).
        features_per_stage: channels per stage (the paper uses ``min(C0 * 2**l, 512)``).
        conv_op: ``nn.Conv2d`` or ``nn.Conv3d`` (or its dotted name).
        kernel_sizes: per stage, per axis; the NDC filter size of that stage (odd).
        strides: per stage, per axis; ``strides[0]`` must be 1 (the stem keeps full resolution).
            Down-sampling convs and up-sampling transposed convs use the stage's stride as kernel and stride.
        deep_supervision: return one output per decoder stage, highest resolution first.
        ndc_ratio: source channel ratio R. ndc_groups: NDC groups G (None: one per channel).
        mlp_ratio: MLP expansion alpha. n_blocks_per_stage(_decoder): Deconver blocks per stage.
        ndc_eps, ndc_iterations: the update's epsilon (finite, > 0) and iteration count (>= 1).
        stem_kernel_size: the stem conv's kernel (None: ``kernel_sizes[0]``).
        upsample: ``"transposed"`` (the paper's transposed convs) or ``"dtc"`` (each wrapped as the base
            of a deformable transposed convolution, see :mod:`nnunetv2_deconver.ops.dtc`).
        dtc_receptive_field: DTC's receptive field in input pixels per axis, > 0 (None: unrestricted);
            checked whatever ``upsample`` is, so a plan's typo fails where it is written.

    Raises:
        ValueError: one line naming the argument, for every value outside these ranges (also under
            ``python -O``: no asserts).
    Memory (what a training forward keeps for backward; values and gradients do not depend on it):
        block_memory: every block's ``memory`` (see ``DeconverBlock``): ``"regions"`` (default; each half
            recomputed in backward, one region at a time), ``"block"`` (the whole block recomputed at once)
            or ``"plain"`` (plain autograd).
        checkpoint_blocks: ``True`` is ``block_memory="block"`` (the name plans and trainers used first).
    """

    def __init__(self, input_channels: int, n_stages: int, features_per_stage: IntOrSeq, conv_op,
                 kernel_sizes, strides, num_classes: int, deep_supervision: bool = False,
                 ndc_ratio: int = 4, ndc_groups: int = None, mlp_ratio: int = 4,
                 n_blocks_per_stage: IntOrSeq = 1, n_blocks_per_stage_decoder: IntOrSeq = 1,
                 ndc_eps: float = 1e-8, ndc_iterations: int = 1, stem_kernel_size: IntOrSeq = None,
                 upsample: str = "transposed", dtc_receptive_field: Optional[float] = 2.0,
                 checkpoint_blocks: bool = False, block_memory: str = "regions"):
        super().__init__()
        given = {name: value for name, value in locals().items() if name not in ("self", "__class__")}
        a = self.arguments = normalise(**given)
        self.strides, self.kernel_sizes, self.features_per_stage = a.strides, a.kernel_sizes, a.features_per_stage
        self.ndc_ratio, self.mlp_ratio = a.ndc_ratio, a.mlp_ratio
        self.n_blocks_per_stage, self.n_blocks_per_stage_decoder = a.n_blocks_per_stage, a.n_blocks_per_stage_decoder
        self.stem_kernel_size, self.upsample = a.stem_kernel_size, a.upsample
        self.encoder = DeconverEncoder(a.input_channels, a.features_per_stage, a.conv_op, a.kernel_sizes, a.strides,
                                       a.n_blocks_per_stage, a.stem_kernel_size, a.ndc_groups, a.block_kwargs())
        self.decoder = DeconverDecoder(a.features_per_stage, a.conv_op, a.kernel_sizes, a.strides,
                                       a.n_blocks_per_stage_decoder, a.num_classes, a.deep_supervision, a.ndc_groups,
                                       a.block_kwargs(), a.upsample, a.dtc_receptive_field)
        self.checkpoint_blocks, self.block_memory = a.block_memory == "block", a.block_memory
        self._divisor = stride_divisor(self.strides)

    @property
    def divisor(self) -> Tuple[int, ...]:
        """What every input patch size must be divisible by, per axis (the product of all strides)."""
        return self._divisor

    def forward(self, x: torch.Tensor) -> Union[torch.Tensor, List[torch.Tensor]]:
        spatial = tuple(x.shape[2:])
        if len(spatial) != len(self.divisor) or any(s % d for s, d in zip(spatial, self.divisor)):
            raise ValueError(f"Deconver input of spatial size {spatial} is not divisible by the product of the "
                             f"strides {self.divisor} on every axis; use a patch size that is a multiple of it")
        if torch.is_grad_enabled() or x.device.type != "cpu" or len(spatial) not in CHANNELS_LAST:
            return self.decoder(self.encoder(x))
        return _cpu_inference(self, x)

    def compute_conv_feature_map_size(self, input_size: Sequence[int]) -> int:
        """Elements of the feature maps the layers write for one sample of ``input_size``.

        nnU-Net's planner uses this as a VRAM proxy. Per Deconver block of width C at a resolution
        of V voxels: norm C, projection C, source R*C, NDC output R*C, projection C, norm C, MLP
        hidden alpha*C, MLP output C, so (5 + 2R + alpha) * C * V; plus the stride convs, fusions
        and heads; with DTC, per up-sampling its feature branch (C at the coarse size), coordinates
        (2 * dim at the fine size) and sampled features (C at the fine size).
        """
        size = np.array(input_size, dtype=np.int64)
        per_block = 5 + 2 * self.ndc_ratio + self.mlp_ratio
        total, sizes = 0, []
        for s, c in enumerate(self.features_per_stage):
            size = size // np.array(self.strides[s])
            sizes.append(int(np.prod(size)))
            total += c * sizes[s] * (1 + per_block * self.n_blocks_per_stage[s])  # stride conv + blocks
        n_classes = self.decoder.seg_layers[0].out_channels
        for d, s in enumerate(reversed(range(len(self.features_per_stage) - 1))):
            c = self.features_per_stage[s]
            total += sizes[s] * (2 * c + per_block * c * self.n_blocks_per_stage_decoder[d] + n_classes)
            if self.upsample == "dtc":
                total += c * sizes[s + 1] + (2 * len(size) + c) * sizes[s]
        return int(total)

    @staticmethod
    def initialize(module: nn.Module) -> None:
        """nnU-Net applies this to every module: Deconver keeps torch's default (Kaiming-uniform) init."""
        if hasattr(module, "reset_parameters"):
            module.reset_parameters()
