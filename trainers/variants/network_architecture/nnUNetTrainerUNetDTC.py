"""nnU-Net's own U-Nets (PlainConvUNet, ResidualEncoderUNet) with DTC around every decoder transposed conv,
as the DTC paper did for nnU-Net on BTCV (its Table 3)."""
from typing import Optional

from torch import nn

from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
from nnunetv2.utilities.get_network_from_plans import get_network_from_plans
from nnunetv2.utilities.plans_handling.plans_handler import ConfigurationManager, PlansManager

from nnunetv2_deconver.nnunet.trainer_mixins import AtomicCheckpoints
from nnunetv2_deconver.ops import DeformableTransposedConv


class nnUNetTrainerUNetDTC(AtomicCheckpoints, nnUNetTrainer):
    """The plan's network (stock nnU-Net init), then each ``decoder.transpconvs[i]`` becomes the base of a
    :class:`DeformableTransposedConv` with receptive field ``dtc_receptive_field`` (input pixels per axis;
    None: unrestricted). Optimiser, schedule and everything else are nnU-Net's defaults; checkpoints are
    written to a temporary file and renamed (``AtomicCheckpoints``)."""
    dtc_receptive_field: Optional[float] = 2.0

    @classmethod
    def build_network_architecture(cls, plans_manager: PlansManager, configuration_manager: ConfigurationManager,
                                   num_input_channels: int, num_output_channels: int,
                                   enable_deep_supervision: bool = True) -> nn.Module:
        # a classmethod (nnU-Net's is static) so the receptive-field subclasses stay one line; nnU-Net calls
        # it identically on the class at inference and on the instance in training
        network = get_network_from_plans(configuration_manager.network_arch_class_name,
                                         configuration_manager.network_arch_init_kwargs,
                                         configuration_manager.network_arch_init_kwargs_req_import,
                                         num_input_channels, num_output_channels, allow_init=True,
                                         deep_supervision=enable_deep_supervision)
        transpconvs = getattr(getattr(network, "decoder", None), "transpconvs", None)
        if not isinstance(transpconvs, nn.ModuleList) or not all(
                isinstance(m, (nn.ConvTranspose2d, nn.ConvTranspose3d)) for m in transpconvs):
            raise ValueError(f"{cls.__name__} needs a U-Net whose decoder has transposed convs in "
                             f"decoder.transpconvs (PlainConvUNet, ResidualEncoderUNet); the plan's network is "
                             f"{configuration_manager.network_arch_class_name}")
        # wrapped after nnU-Net's init, which would otherwise re-draw the zeroed offset rows
        for i, conv in enumerate(transpconvs):
            transpconvs[i] = DeformableTransposedConv.wrap(conv, receptive_field=cls.dtc_receptive_field)
        return network


class nnUNetTrainerUNetDTC_rf4(nnUNetTrainerUNetDTC):
    dtc_receptive_field = 4.0


class nnUNetTrainerUNetDTC_rf10(nnUNetTrainerUNetDTC):
    dtc_receptive_field = 10.0


class nnUNetTrainerUNetDTC_rfUnrestricted(nnUNetTrainerUNetDTC):
    dtc_receptive_field = None

