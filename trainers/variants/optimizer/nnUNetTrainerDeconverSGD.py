import torch

from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

from nnunetv2_deconver.trainers.nnUNetTrainerDeconver import nnUNetTrainerDeconver


class nnUNetTrainerDeconverSGD(nnUNetTrainerDeconver):
    """nnU-Net's own optimiser and schedule (SGD, Nesterov momentum 0.99, lr 1e-2, weight decay 3e-5,
    poly decay): with the stock plans only the network differs from ``nnUNetTrainer``."""

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.initial_lr = 1e-2
        self.weight_decay = 3e-5

    def configure_optimizers(self):
        return nnUNetTrainer.configure_optimizers(self)
