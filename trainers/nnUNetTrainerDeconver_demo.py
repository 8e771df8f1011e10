from nnunetv2_deconver.short_runs import DemoRun
from nnunetv2_deconver.trainers.nnUNetTrainerDeconver import nnUNetTrainerDeconver


class nnUNetTrainerDeconver_demo(DemoRun, nnUNetTrainerDeconver):
    """Deconver with the demo's short budget (see ``DemoRun``), the same as ``nnUNetTrainer_demo``'s."""
