"""Cost accounting: parameters and FLOPs per voxel, honestly and the way the paper counted.

FLOPs come from ``torch.utils.flop_counter`` (2 FLOPs per multiply-accumulate of every convolution,
functional ones included), evaluated on the ``meta`` device so no arithmetic is run.
"paper-style" leaves out the convolutions inside the NDC update (``K`` and its adjoint), which the
paper's profiler did not see; elementwise operations are counted by neither.

Memory: the bytes autograd saves for backward, counted by hooking every save.
"""
import copy
import math
from typing import Callable, Dict, Iterable, NamedTuple, Sequence

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from nnunetv2_deconver.ops import NDC

__all__ = ["Cost", "count_parameters", "measure_cost", "saved_tensor_bytes", "saved_activation_bytes"]


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


def saved_tensor_bytes(fn: Callable[[], object], exclude: Iterable[torch.Tensor] = ()) -> int:
    """Bytes of the tensors autograd saves for backward while ``fn`` runs, those of ``exclude``
    (parameters, which are not activations) left out.

    Real tensors count once per distinct storage (a view saved twice is one buffer). Meta tensors have no
    storage to tell apart, so each save counts in full: where two saves share storage this over-counts,
    on the safe side.
    """
    exclude = list(exclude)
    skip_ids = {id(t) for t in exclude}
    skip_storages = {t.untyped_storage().data_ptr() for t in exclude if t.device.type != "meta"}
    storages: Dict[object, int] = {}

    def pack(tensor: torch.Tensor):
        if id(tensor) in skip_ids:
            return tensor
        if tensor.device.type == "meta":
            storages[len(storages), "meta"] = tensor.numel() * tensor.element_size()
        else:
            storage = tensor.untyped_storage()
            if storage.data_ptr() not in skip_storages:
                storages[storage.data_ptr()] = storage.nbytes()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        fn()
    return int(sum(storages.values()))


def saved_activation_bytes(network: nn.Module, input_channels: int, patch_size: Sequence[int],
                           batch_size: int = 1) -> int:
    """Bytes of the tensors autograd saves in one training forward of ``network`` (parameters excluded).

    On the meta device nothing is computed or allocated (the planner's use); see :func:`saved_tensor_bytes`.
    """
    device = next(network.parameters()).device
    x = torch.zeros((batch_size, input_channels, *patch_size), device=device)
    return saved_tensor_bytes(lambda: network(x), exclude=network.parameters())
