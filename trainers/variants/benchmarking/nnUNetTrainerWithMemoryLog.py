from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

from nnunetv2_deconver.nnunet.trainer_mixins import AtomicCheckpoints, PeakGPUMemoryLog


class nnUNetTrainerWithMemoryLog(AtomicCheckpoints, PeakGPUMemoryLog, nnUNetTrainer):
    """Stock nnU-Net's trainer, unchanged, plus a ``Peak GPU memory: X MiB`` line per epoch in the training
    log: the baseline for ``nnUNetv2_deconver_compare`` when memory is compared. Checkpoints are written
    to a temporary file and renamed, as by the Deconver trainers."""
