"""Trainers with the smoke schedule (1 epoch of 2 training and 1 validation iteration, no test-time
mirroring): the whole pipeline in seconds on a CPU, for tests. Nothing outside tests imports them."""
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

from nnunetv2_deconver.nnunet.trainer_mixins import SmokeRun
from nnunetv2_deconver.trainers.nnUNetTrainerDeconver import nnUNetTrainerDeconver
from nnunetv2_deconver.trainers.variants.network_architecture.nnUNetTrainerDeconverDTC import nnUNetTrainerDeconverDTC
from nnunetv2_deconver.trainers.variants.network_architecture.nnUNetTrainerUNetDTC import nnUNetTrainerUNetDTC


class nnUNetTrainer_smoke(SmokeRun, nnUNetTrainer):
    """Stock nnU-Net with the smoke schedule: the stock trainer beside Deconver in the tests of nnU-Net's
    commands that take several trainers (find_best_configuration, ensembling)."""


class nnUNetTrainerDeconver_smoke(SmokeRun, nnUNetTrainerDeconver):
    """Deconver with the smoke schedule."""


class nnUNetTrainerDeconverDTC_smoke(SmokeRun, nnUNetTrainerDeconverDTC):
    """The DTC network with the smoke schedule."""


class nnUNetTrainerUNetDTC_smoke(SmokeRun, nnUNetTrainerUNetDTC):
    """Stock U-Net with DTC, with the smoke schedule."""


class nnUNetTrainerDeconver_smoke_nan(SmokeRun, nnUNetTrainerDeconver):
    """Deconver with the smoke schedule fed NaN images, as a corrupt case would feed it: the loss turns NaN
    in the first step, which must stop training before any checkpoint is written."""

    def train_step(self, batch: dict) -> dict:
        return super().train_step(dict(batch, data=batch["data"] * float("nan")))
