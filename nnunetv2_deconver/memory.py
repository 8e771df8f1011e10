"""A memory model of Deconver training, for choosing patch and batch size against a GPU memory target.

Training memory = activations autograd keeps for backward (proportional to batch size) + a fixed
part (weights, gradients, the two AdamW moments: 16 bytes per parameter in fp32) + a workspace margin.
The activations are measured, not guessed: ``saved_activation_bytes`` runs one forward on the meta
device (no compute, no memory) and adds up every tensor autograd saves for backward.
``ACTIVATION_BYTES_PER_FEATURE_ELEMENT`` relates that to Deconver's ``compute_conv_feature_map_size``
(the planner's cheap proxy); its value is a measured fit, see docs/nnunet.md.
"""
from typing import Sequence

import torch
from torch import nn

__all__ = ["saved_activation_bytes", "estimate_training_bytes", "ACTIVATION_BYTES_PER_FEATURE_ELEMENT",
           "WORKSPACE_BYTES"]

# measured by saved_activation_bytes / compute_conv_feature_map_size on the paper's networks (fp32 saves);
# see docs/nnunet.md for the table; the largest ratio measured, so the model errs on the safe side
ACTIVATION_BYTES_PER_FEATURE_ELEMENT = 6.6
# CUDA context, cuDNN workspaces and allocator fragmentation, a flat margin
WORKSPACE_BYTES = 1.5 * 2 ** 30


def saved_activation_bytes(network: nn.Module, input_channels: int, patch_size: Sequence[int],
                           batch_size: int = 1) -> int:
    """Bytes of the tensors autograd saves in one training forward of ``network`` (parameters excluded).

    The network must be on the meta device, so that nothing is computed or allocated. Every saved
    tensor is counted once per save: where two saves share storage this over-counts, on the safe side.
    """
    params = {id(p) for p in network.parameters()}
    total = 0

    def pack(t: torch.Tensor):
        nonlocal total
        if id(t) not in params:
            total += t.numel() * t.element_size()
        return t

    x = torch.zeros((batch_size, input_channels, *patch_size), device="meta", requires_grad=False)
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = network(x)
    del out
    return int(total)


def estimate_training_bytes(feature_map_elements: int, n_parameters: int, batch_size: int) -> float:
    """Peak training memory in bytes from the planner's proxy (``compute_conv_feature_map_size`` of one
    sample), the parameter count and the batch size."""
    return (ACTIVATION_BYTES_PER_FEATURE_ELEMENT * feature_map_elements * batch_size + 16 * n_parameters
            + WORKSPACE_BYTES)
