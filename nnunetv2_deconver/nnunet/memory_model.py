"""A memory model of Deconver training, for choosing patch and batch size against a GPU memory target.

Training memory = activations autograd keeps for backward (proportional to batch size) + a fixed
part (weights, gradients, the two AdamW moments: 16 bytes per parameter in fp32) + a workspace margin.
The activations are measured, not guessed:
``nnunetv2_deconver.network.costs.saved_activation_bytes`` runs one forward on the meta
device (no compute, no memory) and adds up every tensor autograd saves for backward.
``ACTIVATION_BYTES_PER_FEATURE_ELEMENT`` relates that to Deconver's ``compute_conv_feature_map_size``
(the planner's cheap proxy); its value is a measured fit, see docs/nnunet.md.
"""
__all__ = ["estimate_training_bytes", "ACTIVATION_BYTES_PER_FEATURE_ELEMENT",
           "WORKSPACE_BYTES"]

# measured by saved_activation_bytes / compute_conv_feature_map_size on the paper's networks (fp32 saves)
# with the blocks on plain autograd, the path of GPU training (compiled, under autocast; the recomputing
# block functions serve eager fp32 training only, see network/block_recompute.py);
# see docs/nnunet.md for the table; the largest ratio measured, so the model errs on the safe side
ACTIVATION_BYTES_PER_FEATURE_ELEMENT = 6.6
# CUDA context, cuDNN workspaces and allocator fragmentation, a flat margin
WORKSPACE_BYTES = 1.5 * 2 ** 30


def estimate_training_bytes(feature_map_elements: int, n_parameters: int, batch_size: int) -> float:
    """Peak training memory in bytes from the planner's proxy (``compute_conv_feature_map_size`` of one
    sample), the parameter count and the batch size."""
    return (ACTIVATION_BYTES_PER_FEATURE_ELEMENT * feature_map_elements * batch_size + 16 * n_parameters
            + WORKSPACE_BYTES)
