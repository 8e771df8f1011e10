from nnunetv2_deconver.short_runs import SmokeRun
from nnunetv2_deconver.trainers.nnUNetTrainerDeconver import nnUNetTrainerDeconver


class nnUNetTrainerDeconver_smoke(SmokeRun, nnUNetTrainerDeconver):
    """One epoch of 2 training and 1 validation iteration, no mirroring; for tests on a CPU."""
