"""Deconver (nonnegative deconvolution) networks for nnU-Net v2."""
from nnunetv2_deconver.ops import NDC, nonnegative_deconvolution
from nnunetv2_deconver.network import Deconver
from nnunetv2_deconver.network.presets import paper_network

__all__ = ["Deconver", "NDC", "nonnegative_deconvolution", "paper_network"]
__version__ = "0.1.0"
