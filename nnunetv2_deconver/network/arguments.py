"""Deconver's constructor arguments, checked and expanded in one step: one entry per stage, one per axis.

An nnU-Net plan gives some values once for all stages or axes and others per stage; :func:`normalise`
turns every argument into its full form or raises a one-line ValueError naming it (the rules are those
of :mod:`nnunetv2_deconver.ops.checks`), so that the network's constructor only builds.
"""
import math
import pydoc
from dataclasses import dataclass
from typing import List, Optional, Sequence, Tuple

from torch import nn

from nnunetv2_deconver.network.blocks import MEMORY_MODES
from nnunetv2_deconver.ops import (check_choice, check_integers, check_odd_kernel, check_receptive_field,
                                  check_update_options, is_integer)

__all__ = ["DeconverArguments", "normalise", "stride_divisor", "UPSAMPLE", "SPATIAL_DIMS"]

UPSAMPLE = ("transposed", "dtc")
SPATIAL_DIMS = {nn.Conv2d: 2, nn.Conv3d: 3}


@dataclass(frozen=True)
class DeconverArguments:
    """Every argument of :class:`~nnunetv2_deconver.network.deconver.Deconver` in its full form."""

    input_channels: int
    num_classes: int
    conv_op: type
    features_per_stage: List[int]
    kernel_sizes: List[Tuple[int, ...]]
    strides: List[Tuple[int, ...]]
    ndc_groups: list  # per stage: an integer or None (one group per channel)
    n_blocks_per_stage: List[int]
    n_blocks_per_stage_decoder: List[int]
    stem_kernel_size: Tuple[int, ...]
    deep_supervision: bool
    ndc_ratio: int
    mlp_ratio: int
    ndc_eps: float
    ndc_iterations: int
    upsample: str
    dtc_receptive_field: Optional[float]
    block_memory: str

    @property
    def dim(self) -> int:
        return SPATIAL_DIMS[self.conv_op]

    def block_kwargs(self) -> dict:
        """What every :class:`~nnunetv2_deconver.network.blocks.DeconverBlock` takes besides its stage's values."""
        return dict(ratio=self.ndc_ratio, mlp_ratio=self.mlp_ratio, eps=self.ndc_eps, iterations=self.ndc_iterations,
                    memory=self.block_memory)


def _per_axis(value, dim: int, name: str) -> Tuple[int, ...]:
    value = (value,) * dim if not isinstance(value, (list, tuple)) else tuple(value)
    if len(value) != dim or not all(is_integer(v) for v in value):
        raise ValueError(f"{name} must be an integer or {dim} integers (one per spatial axis), got {list(value)}")
    return tuple(int(v) for v in value)


def _per_stage(value, n_stages: int, name: str) -> list:
    value = list(value) if isinstance(value, (list, tuple)) else [value] * n_stages
    if len(value) != n_stages:
        raise ValueError(f"{name} needs one entry per stage ({n_stages}), got {len(value)}: {value}")
    return value


def stride_divisor(strides: Sequence[Sequence[int]]) -> Tuple[int, ...]:
    """Per axis, the product of every stage's stride: each patch axis must be a multiple of it."""
    # plain integers, not numpy: torch.compile traces numpy calls as tensor operations
    return tuple(math.prod([int(stride[axis]) for stride in strides]) for axis in range(len(strides[0])))


def _conv_op(conv_op) -> type:
    conv_op = pydoc.locate(conv_op) if isinstance(conv_op, str) else conv_op
    if conv_op not in SPATIAL_DIMS:
        raise ValueError(f"conv_op must be torch.nn.Conv2d or torch.nn.Conv3d, got {conv_op}")
    return conv_op


def _topology(n_stages, dim: int, features_per_stage, kernel_sizes, strides, stem_kernel_size, ndc_groups) -> dict:
    check_integers(n_stages, "n_stages", 2)
    features = _per_stage(features_per_stage, n_stages, "features_per_stage")
    check_integers(features, "features_per_stage")
    kernels = [check_odd_kernel(_per_axis(k, dim, "kernel size"), f"kernel_sizes[{s}] (an NDC filter)", (dim,))
               for s, k in enumerate(_per_stage(kernel_sizes, n_stages, "kernel_sizes"))]
    strides = [_per_axis(s, dim, "stride") for s in _per_stage(strides, n_stages, "strides")]
    check_integers([v for s in strides for v in s], "strides")
    if any(v != 1 for v in strides[0]):
        raise ValueError(f"strides[0] must be 1 on every axis (the stem keeps full resolution), got {strides[0]}")
    stem = kernels[0] if stem_kernel_size is None else _per_axis(stem_kernel_size, dim, "stem_kernel_size")
    check_integers(list(stem), "stem_kernel_size")
    groups = _per_stage(ndc_groups, n_stages, "ndc_groups")
    for c, g in zip(features, groups):
        if g is not None and (not is_integer(g) or g < 1 or c % g):
            raise ValueError(f"ndc_groups={g} must be a positive integer dividing every stage's width; "
                             f"{c} is not divisible")
    return dict(features_per_stage=features, kernel_sizes=kernels, strides=strides, stem_kernel_size=stem,
                ndc_groups=groups)


def normalise(input_channels, n_stages, features_per_stage, conv_op, kernel_sizes, strides, num_classes,
              deep_supervision, ndc_ratio, ndc_groups, mlp_ratio, n_blocks_per_stage, n_blocks_per_stage_decoder,
              ndc_eps, ndc_iterations, stem_kernel_size, upsample, dtc_receptive_field, checkpoint_blocks,
              block_memory) -> DeconverArguments:
    """The arguments of ``Deconver(...)`` (same names and meaning) in their full form; ValueError otherwise."""
    check_choice(upsample, UPSAMPLE, "upsample")
    check_receptive_field(dtc_receptive_field, "dtc_receptive_field")
    check_update_options(ndc_eps, ndc_iterations)
    conv_op = _conv_op(conv_op)
    check_integers(input_channels, "input_channels")
    check_integers(num_classes, "num_classes")
    topology = _topology(n_stages, SPATIAL_DIMS[conv_op], features_per_stage, kernel_sizes, strides, stem_kernel_size,
                         ndc_groups)
    check_integers(ndc_ratio, "ndc_ratio")
    check_integers(mlp_ratio, "mlp_ratio")
    if not isinstance(checkpoint_blocks, bool):
        raise ValueError(f"checkpoint_blocks must be true or false, got {checkpoint_blocks!r}")
    check_choice(block_memory, MEMORY_MODES, "block_memory")
    blocks = _per_stage(n_blocks_per_stage, n_stages, "n_blocks_per_stage")
    decoder_blocks = _per_stage(n_blocks_per_stage_decoder, n_stages - 1, "n_blocks_per_stage_decoder")
    check_integers(blocks + decoder_blocks, "n_blocks_per_stage(_decoder)", 0)
    return DeconverArguments(
        input_channels=input_channels, num_classes=num_classes, conv_op=conv_op, **topology,
        n_blocks_per_stage=blocks, n_blocks_per_stage_decoder=decoder_blocks, deep_supervision=deep_supervision,
        ndc_ratio=ndc_ratio, mlp_ratio=mlp_ratio, ndc_eps=ndc_eps, ndc_iterations=ndc_iterations, upsample=upsample,
        dtc_receptive_field=dtc_receptive_field, block_memory="block" if checkpoint_blocks else block_memory)
