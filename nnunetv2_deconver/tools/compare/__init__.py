"""``nnUNetv2_deconver_compare``: stock nnU-Net against Deconver on the same data."""
from nnunetv2_deconver.tools.compare.command import *  # noqa: F401,F403
from nnunetv2_deconver.tools.compare.command import main  # noqa: F401
