"""``nnunetv2_deconver compare`` (alias ``nnUNetv2_deconver_compare``): stock nnU-Net against Deconver on the
same data. ``runs`` finds what to compare, ``scoring`` checks and scores every case, ``statistics`` tests
the differences, ``costs`` counts what each network costs, ``report`` and ``plots`` write the report;
``records`` holds the typed records they pass on; ``command`` runs it all."""
from nnunetv2_deconver.tools.compare.command import CompareError, Comparison, NnunetFolders, Run, compare, main

__all__ = ["CompareError", "Comparison", "NnunetFolders", "Run", "compare", "main"]
