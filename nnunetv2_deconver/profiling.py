"""Cost accounting: parameters and FLOPs per voxel, honestly and the way the paper counted.

FLOPs come from ``torch.utils.flop_counter`` (2 FLOPs per multiply-accumulate of every convolution,
functional ones included), evaluated on the ``meta`` device so no arithmetic is run.
"paper-style" leaves out the convolutions inside the NDC update (``K`` and its adjoint), which the
paper's profiler did not see; elementwise operations are counted by neither.
"""
import copy
import math
from typing import NamedTuple, Sequence

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from nnunetv2_deconver.ndc import NDC

__all__ = ["Cost", "count_parameters", "measure_cost"]


class Cost(NamedTuple):
    parameters: int
    flops_per_voxel: float  # every convolution
    paper_style_flops_per_voxel: float  # without the NDC update's convolutions


def count_parameters(network: nn.Module) -> int:
    return sum(p.numel() for p in network.parameters())


def measure_cost(network: nn.Module, input_channels: int, patch_size: Sequence[int]) -> Cost:
    """Parameters and forward FLOPs per input voxel of one sample of ``patch_size``."""
    meta = copy.deepcopy(network).to("meta") if any(p.device.type != "meta" for p in network.parameters()) \
        else network
    x = torch.empty(1, input_channels, *patch_size, device="meta")
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        meta(x)
    per_module = {name: sum(ops.values()) for name, ops in counter.get_flop_counts().items()}
    root = type(meta).__name__
    update = 0
    for name, module in meta.named_modules():
        if isinstance(module, NDC):
            # the layer's FLOPs less its 1x1 projection are the update's convolutions
            update += per_module.get(f"{root}.{name}", 0) - per_module.get(f"{root}.{name}.project", 0)
    voxels = math.prod(patch_size)
    total = counter.get_total_flops()
    return Cost(count_parameters(network), total / voxels, (total - update) / voxels)
