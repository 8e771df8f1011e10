from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

from nnunetv2_deconver.nnunet.trainer_mixins import DemoRun


class nnUNetTrainer_demo(DemoRun, nnUNetTrainer):
    """Stock nnU-Net with the demo's short budget (see ``DemoRun``), the baseline of ``nnunetv2_deconver demo``."""
