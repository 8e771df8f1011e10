import torch

from nnunetv2_deconver.trainers.nnUNetTrainerDeconver import nnUNetTrainerDeconver


class nnUNetTrainerDeconver_5epochs(nnUNetTrainerDeconver):
    """Five epochs: for checking a plan or a machine end to end (cf. nnUNetTrainer_5epochs)."""

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.num_epochs = 5
