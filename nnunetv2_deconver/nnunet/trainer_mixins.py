"""Short training schedules for tests and the demo, as mixins for any nnU-Net trainer.

A mixin goes first in the bases (``class X(SmokeRun, nnUNetTrainerDeconver)``). Its constructor has
nnU-Net's exact signature, because nnU-Net records a trainer's init arguments from that signature.
The demo passes its budget to its ``nnUNetv2_train`` subprocesses through environment variables, as
the constructor admits no extra argument.
"""
import os

import torch

__all__ = ["WithoutTestTimeMirroring", "SmokeRun", "DemoRun", "EPOCHS_VARIABLE", "ITERATIONS_VARIABLE",
           "DEFAULT_EPOCHS", "DEFAULT_ITERATIONS"]

EPOCHS_VARIABLE = "NNUNETV2_DECONVER_DEMO_EPOCHS"
ITERATIONS_VARIABLE = "NNUNETV2_DECONVER_DEMO_ITERATIONS"
DEFAULT_EPOCHS = 10
DEFAULT_ITERATIONS = 20


class WithoutTestTimeMirroring:
    """No mirroring at validation and inference: it multiplies inference cost by 4 (2D) or 8 (3D)."""

    def configure_rotation_dummyDA_mirroring_and_inital_patch_size(self):
        rotation_for_DA, do_dummy_2d_data_aug, initial_patch_size, _ = \
            super().configure_rotation_dummyDA_mirroring_and_inital_patch_size()
        self.inference_allowed_mirroring_axes = None
        return rotation_for_DA, do_dummy_2d_data_aug, initial_patch_size, None


class SmokeRun(WithoutTestTimeMirroring):
    """One epoch of 2 training and 1 validation iteration: the whole pipeline (training, checkpoints,
    final validation, inference) in seconds on a CPU, for tests."""

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.num_epochs = 1
        self.num_iterations_per_epoch = 2
        self.num_val_iterations_per_epoch = 1


class DemoRun(WithoutTestTimeMirroring):
    """The demo's budget: ``NNUNETV2_DECONVER_DEMO_EPOCHS`` epochs (default 10) of
    ``NNUNETV2_DECONVER_DEMO_ITERATIONS`` training iterations (default 20; validation a fifth of that,
    at least 1), with a checkpoint every epoch so an interrupted demo resumes."""

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.num_epochs = int(os.environ.get(EPOCHS_VARIABLE, DEFAULT_EPOCHS))
        self.num_iterations_per_epoch = int(os.environ.get(ITERATIONS_VARIABLE, DEFAULT_ITERATIONS))
        self.num_val_iterations_per_epoch = max(1, self.num_iterations_per_epoch // 5)
        self.save_every = 1
