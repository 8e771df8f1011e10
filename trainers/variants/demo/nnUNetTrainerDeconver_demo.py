from nnunetv2_deconver.nnunet.trainer_mixins import DemoRun
from nnunetv2_deconver.trainers.variants.optimizer.nnUNetTrainerDeconverSGD import nnUNetTrainerDeconverSGD


class nnUNetTrainerDeconver_demo(DemoRun, nnUNetTrainerDeconverSGD):
    """Deconver with the demo's short budget (see ``DemoRun``) and nnU-Net's own optimiser and schedule,
    so that only the network differs from ``nnUNetTrainer_demo``: at a budget of a few dozen iterations
    the paper's AdamW at lr 1e-4 has barely started, which would compare optimisers, not networks."""
