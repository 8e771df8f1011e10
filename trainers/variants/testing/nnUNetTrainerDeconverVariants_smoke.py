"""Smoke-schedule versions (see ``SmokeRun``) of the Deconver trainer variants, and one that records the
weights training starts from, for the end-to-end tests. Nothing outside tests imports them."""
import os

import torch

from nnunetv2_deconver.nnunet.trainer_mixins import SmokeRun
from nnunetv2_deconver.trainers.nnUNetTrainerDeconver import nnUNetTrainerDeconver
from nnunetv2_deconver.trainers.variants.network_architecture.nnUNetTrainerDeconverCheckpointed import \
    nnUNetTrainerDeconverCheckpointed
from nnunetv2_deconver.trainers.variants.network_architecture.nnUNetTrainerDeconverNoDeepSupervision import \
    nnUNetTrainerDeconverNoDeepSupervision

WEIGHTS_AT_START = "weights_at_start.pth"


class nnUNetTrainerDeconverNoDeepSupervision_smoke(SmokeRun, nnUNetTrainerDeconverNoDeepSupervision):
    """Loss on the full-resolution output only, with the smoke schedule."""


class nnUNetTrainerDeconverCheckpointed_smoke(SmokeRun, nnUNetTrainerDeconverCheckpointed):
    """Activation checkpointing of every block, with the smoke schedule."""


class nnUNetTrainerDeconver_smokeRecordsStart(SmokeRun, nnUNetTrainerDeconver):
    """Saves the network's weights to ``fold_N/weights_at_start.pth`` just before the first training step
    (after ``-pretrained_weights`` were loaded)."""

    def on_train_start(self):
        super().on_train_start()
        torch.save(self.network.state_dict(), os.path.join(self.output_folder, WEIGHTS_AT_START))
