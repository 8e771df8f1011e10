"""The NDC implementations a test can run here (``triton`` needs the Triton package, shipped with torch's
Linux wheels, optional elsewhere), and running one with its gradients."""
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


def max_relative_error(got, expected):
    """Largest absolute difference relative to the largest magnitude of ``expected``, in float64."""
    return ((got.double() - expected.double()).abs().max() / expected.double().abs().max()).item()
