from nnunetv2_deconver.nnunet.trainer_mixins import TimedRun
from nnunetv2_deconver.trainers.nnUNetTrainerDeconver import nnUNetTrainerDeconver


class nnUNetTrainerDeconver_timed(TimedRun, nnUNetTrainerDeconver):
    """The default Deconver trainer (AdamW, cosine) with a short budget (``TimedRun``), each epoch's GradScaler
    skips in the log and no final validation, for ``benchmarks/gpu_suite.py``'s training runs."""
