"""The network: Deconver blocks, the Deconver U-Net, the paper's presets and cost counting."""
from nnunetv2_deconver.network.deconver import Deconver, DeconverDecoder, DeconverEncoder, stride_divisor

__all__ = ["Deconver", "DeconverEncoder", "DeconverDecoder", "stride_divisor"]
