"""``nnunetv2_deconver compare`` (alias ``nnUNetv2_deconver_compare``): stock nnU-Net against Deconver on the
same data. ``runs`` finds what to compare, ``statistics`` tests it, ``plots`` draws it; ``command`` scores
and reports."""
from nnunetv2_deconver.tools.compare.command import CompareError, Run, compare, main

__all__ = ["CompareError", "Run", "compare", "main"]
