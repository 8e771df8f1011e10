"""The NDC implementations a test can run here (``triton`` needs the Triton package, shipped with torch's
Linux wheels, optional elsewhere), and running one with its gradients."""
import torch

from nnunetv2_deconver.ops.ndc import nonnegative_deconvolution
from nnunetv2_deconver.ops.ndc_dispatch import IMPLEMENTATIONS
from nnunetv2_deconver.ops.ndc_triton import triton_available

RUNNABLE = tuple(name for name in IMPLEMENTATIONS if name != "triton" or triton_available())


def run_with_gradients(implementation, operands, grad, groups, iterations=1, eps=1e-8):
    """The update of ``operands`` (x, source, filters) and their gradients for the output gradient ``grad``."""
    for tensor in operands:
        tensor.grad = None
    out = nonnegative_deconvolution(*operands, groups, eps, iterations, implementation=implementation)
    out.backward(grad)
    return out.detach(), [tensor.grad.clone() for tensor in operands]


def run_under_bf16_autocast(implementation, operands, grad, groups):
    """The update of bf16 casts of ``x`` and ``source`` (``filters`` as given) inside CPU bf16 autocast, and the
    gradients of the fp32 ``operands``; asserts the output is fp32 (the update runs in at least fp32)."""
    for tensor in operands:
        tensor.grad = None
    x, source, filters = operands
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = nonnegative_deconvolution(x.to(torch.bfloat16), source.to(torch.bfloat16), filters, groups,
                                        implementation=implementation)
    assert out.dtype == torch.float32
    out.backward(grad)
    return out.detach(), [t.grad.clone() for t in operands]


def max_relative_error(got, expected):
    """Largest absolute difference relative to the largest magnitude of ``expected``, in float64."""
    return ((got.double() - expected.double()).abs().max() / expected.double().abs().max()).item()
