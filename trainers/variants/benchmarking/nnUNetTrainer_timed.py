from nnunetv2_deconver.nnunet.trainer_mixins import TimedRun
from nnunetv2_deconver.trainers.variants.benchmarking.nnUNetTrainerWithMemoryLog import nnUNetTrainerWithMemoryLog


class nnUNetTrainer_timed(TimedRun, nnUNetTrainerWithMemoryLog):
    """Stock nnU-Net with a short budget (``TimedRun``), each epoch's peak GPU memory and GradScaler skips
    in the log, no final validation: the baseline of ``benchmarks/gpu_suite.py``'s training runs."""
