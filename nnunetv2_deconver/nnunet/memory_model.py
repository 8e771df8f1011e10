"""A memory model of Deconver training, for choosing patch and batch size against a GPU memory target.

Training memory = activations (proportional to batch size) + a fixed part (weights, gradients, the two
AdamW moments: 16 bytes per parameter in fp32) + a workspace margin. The activations are measured, not
guessed, on the path GPU training takes (fp16 autocast, ``torch.compile``):
``nnunetv2_deconver.network.compiled_memory.compiled_step_memory`` traces one training step on fake tensors
(no compute, no memory) and reads off what the forward keeps for backward plus the backward's largest
transient workspace. ``ACTIVATION_BYTES_PER_FEATURE_ELEMENT`` relates their sum to Deconver's
``compute_conv_feature_map_size`` (the planner's cheap proxy); its value is a measured bound, see
docs/nnunet.md.
"""
__all__ = ["estimate_training_bytes", "ACTIVATION_BYTES_PER_FEATURE_ELEMENT", "BYTES_PER_PARAMETER",
           "WORKSPACE_BYTES"]

# measured by compiled_step_memory (saved + transient) / compute_conv_feature_map_size on the paper's
# networks and two plan topologies, fp16 autocast, the default blocks (checkpoint regions);
# see docs/nnunet.md for the table; the largest ratio measured, so the model errs on the safe side
ACTIVATION_BYTES_PER_FEATURE_ELEMENT = 3.0
# CUDA context, cuDNN workspaces and allocator fragmentation, a flat margin
WORKSPACE_BYTES = 1.5 * 2 ** 30
# fp32 weight, gradient and AdamW's two moments
BYTES_PER_PARAMETER = 4 * 4


def estimate_training_bytes(feature_map_elements: int, n_parameters: int, batch_size: int) -> float:
    """Peak training memory in bytes from the planner's proxy (``compute_conv_feature_map_size`` of one
    sample), the parameter count and the batch size."""
    return (ACTIVATION_BYTES_PER_FEATURE_ELEMENT * feature_map_elements * batch_size
            + BYTES_PER_PARAMETER * n_parameters + WORKSPACE_BYTES)
