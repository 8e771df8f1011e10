from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

from nnunetv2_deconver.nnunet.trainer_mixins import StudyRun
from nnunetv2_deconver.trainers.nnUNetTrainerDeconver import nnUNetTrainerDeconver


class nnUNetTrainerDeconver_study(StudyRun, nnUNetTrainerDeconver):
    """The default Deconver trainer with a recipe from the environment (``StudyRun``), for
    ``benchmarks/recipe_study.py``."""


class nnUNetTrainer_study(StudyRun, nnUNetTrainer):
    """Stock nnU-Net with the study's budget and seed from the environment (``StudyRun``)."""
