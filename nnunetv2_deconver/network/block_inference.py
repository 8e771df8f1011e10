"""A Deconver block's inference forward on the CPU: the whole block in one channels-last pass.

The training forward switches layouts around the Deconv mixer (its NDC runs channels-last on the CPU)
and runs the MLP as matrix products on default-layout maps; at inference that costs two C-channel layout
copies per block, a broadcast copy of each bias and a fresh buffer for every elementwise step. Here, with
no gradient recorded, the block runs channels-last from its input to its output: oneDNN's convolutions
read and write that layout, the instance norms run as the batch norm of one sample (the same statistics,
channels-last native), and the ReLU, GELU, ``+ eps`` and the residual sums overwrite buffers nothing
else reads. The math is the training forward's (eq. 4 with eqs. 5-7); only the summation order inside
the library's kernels may differ, so values agree to fp32 rounding.

Nothing here is saved or recorded, and ``torch.compile`` leaves it to eager (it is opaque to dynamo):
inductor would otherwise decompose the grouped convolutions and lose the channels-last CPU path.
"""
import torch
import torch.nn.functional as F

from nnunetv2_deconver.ops import (CHANNELS_LAST, CONV_FN, fused_update, fused_update_applies,
                                   nonnegative_deconvolution, ratio_major)

__all__ = ["channels_last_inference"]


def _instance_norm(norm, x: torch.Tensor) -> torch.Tensor:
    """Affine-free InstanceNorm of a channels-last ``x``: per sample, its batch norm (the same mean and
    biased variance per channel), which runs in that layout; ``F.instance_norm`` would copy it out of it."""
    if x.shape[0] == 1:
        return F.batch_norm(x, None, None, training=True, eps=norm.eps)
    return torch.cat([F.batch_norm(sample, None, None, training=True, eps=norm.eps) for sample in x.split(1)])


_FUSED = getattr(torch.ops.mkldnn, "_convolution_pointwise", None) if torch.backends.mkldnn.is_available() else None
_ACTIVATION = {"relu": F.relu_, "gelu": torch.ops.aten.gelu_}


def _conv_then(x: torch.Tensor, weight: torch.Tensor, bias, activation: str) -> torch.Tensor:
    """``activation(conv1x1(x))`` (exact GELU, as ``nn.GELU()``), fused by oneDNN where torch has it, as
    inductor fuses them on the CPU: the activation costs no pass of its own (GELU's alone costs twice the
    convolution there)."""
    if _FUSED is not None and x.dtype == torch.float32:
        ones, zeros = [1] * (x.dim() - 2), [0] * (x.dim() - 2)
        return _FUSED(x, weight, bias, zeros, ones, ones, 1, activation, [], "none" if activation == "gelu" else "")
    return _ACTIVATION[activation](CONV_FN[x.dim() - 2](x, weight, bias))


@torch.compiler.disable
def channels_last_inference(block, x: torch.Tensor) -> torch.Tensor:
    """``block``'s output for ``x`` without autograd, computed and returned channels-last (the next block's
    layout: at inference the network keeps every map in it, network/deconver.py)."""
    conv = CONV_FN[x.dim() - 2]
    layout = CHANNELS_LAST[x.dim() - 2]
    x = x.contiguous(memory_format=layout)
    mixer, ndc, mlp = block.mixer, block.mixer.ndc, block.mlp
    observed = _conv_then(_instance_norm(block.norm1, x), mixer.project_in.weight, None, "relu")
    filters, project_out = F.relu(ndc.filters), mixer.project_out.weight
    if fused_update_applies(observed, filters, ndc.groups):
        # the fused kernel takes the sources in ratio-major order: the 1x1 convolutions around it are permuted
        channels = observed.shape[1]
        source = _conv_then(observed, ratio_major(ndc.project.weight, channels),
                            ratio_major(ndc.project.bias, channels), "relu")
        update = fused_update(observed, source, filters, ndc.eps, ndc.iterations)
        project_out = ratio_major(project_out, channels, dim=1)
    else:
        source = _conv_then(observed, ndc.project.weight, ndc.project.bias, "relu")
        # "auto" chooses the channels-last path that brought the block here (the observed map has x's shape)
        update = nonnegative_deconvolution(observed, source, filters, ndc.groups, ndc.eps, ndc.iterations,
                                           check_nonnegative=False)
    z = conv(update, project_out, mixer.project_out.bias).add_(x)  # x + mixer(norm1(x))
    del observed, source, update
    hidden = _conv_then(_instance_norm(block.norm2, z), mlp.fc1.weight, mlp.fc1.bias, "gelu")
    # torch's convolutions of small maps return the default layout
    return conv(hidden, mlp.fc2.weight, mlp.fc2.bias).add_(z).contiguous(memory_format=layout)
