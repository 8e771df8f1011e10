"""Trainers with a schedule long enough to learn a tiny, high-contrast dataset on a CPU, for the test that
training learns (``tests/e2e/test_learning.py``): stock nnU-Net with its own SGD and poly schedule against
Deconver with the recipe ``nnUNetTrainerDeconver`` recommends (AdamW 1e-3, warm-up and cosine); a fixed seed
(``NNUNETV2_DECONVER_TEST_SEED``, default 0) for the weights, the patch sampling and the augmentation, and one
torch thread. Nothing outside tests imports them."""
import os

import torch

from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

from nnunetv2_deconver.nnunet.trainer_mixins import FixedBudget, seed_everything
from nnunetv2_deconver.trainers.nnUNetTrainerDeconver import nnUNetTrainerDeconver

SEED_VARIABLE = "NNUNETV2_DECONVER_TEST_SEED"


def _single_threaded_and_seeded() -> None:
    # nnUNetv2_train sets torch to one thread per CPU; one thread makes the run the same on any machine and
    # spares a shared CI machine from oversubscription (the network is small, one thread is enough)
    torch.set_num_threads(1)
    seed_everything(int(os.environ.get(SEED_VARIABLE, "0")))


class nnUNetTrainer_learn(FixedBudget, nnUNetTrainer):
    """Stock nnU-Net, the baseline: 6 epochs of 20 training iterations (120 SGD steps), 1 validation
    iteration per epoch, seeded before the network is built and again before the first batch."""

    budget = (6, 20, 1)

    def initialize(self):
        _single_threaded_and_seeded()
        super().initialize()

    def on_train_start(self):
        super().on_train_start()
        _single_threaded_and_seeded()


class nnUNetTrainerDeconver_learn(nnUNetTrainer_learn, nnUNetTrainerDeconver):
    """Deconver with the same budget and seed and the default trainer's optimiser and schedule (AdamW 1e-3,
    warm-up over the first epoch, cosine over the remaining five)."""
