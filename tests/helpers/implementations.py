"""The NDC implementations a test can run here: ``triton`` needs the Triton package (shipped with torch's
Linux wheels, optional elsewhere)."""
from nnunetv2_deconver.ops.ndc_dispatch import IMPLEMENTATIONS
from nnunetv2_deconver.ops.ndc_triton import triton_available

RUNNABLE = tuple(name for name in IMPLEMENTATIONS if name != "triton" or triton_available())
