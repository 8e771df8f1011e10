import torch
from torch import nn

from nnunetv2_deconver.trainers.nnUNetTrainerDeconver import nnUNetTrainerDeconver


class nnUNetTrainerDeconverNoDeepSupervision(nnUNetTrainerDeconver):
    """Loss on the full-resolution output only (the paper trains without deep supervision)."""

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.enable_deep_supervision = False

    @classmethod
    def build_network_architecture(cls, plans_manager, configuration_manager, num_input_channels: int,
                                   num_output_channels: int, enable_deep_supervision: bool = False) -> nn.Module:
        network = super().build_network_architecture(plans_manager, configuration_manager, num_input_channels,
                                                      num_output_channels, False)
        # the lower-resolution heads would never receive a gradient, which DDP rejects
        for d in range(len(network.decoder.seg_layers) - 1):
            network.decoder.seg_layers[d] = nn.Identity()
        return network
