"""Deconver with DTC in its decoder: each transposed conv becomes the base of a deformable transposed
convolution (``Deconver(upsample="dtc")``); training as ``nnUNetTrainerDeconver``."""
from typing import Optional

from nnunetv2.utilities.plans_handling.plans_handler import ConfigurationManager, PlansManager

from nnunetv2_deconver.trainers.nnUNetTrainerDeconver import nnUNetTrainerDeconver


class nnUNetTrainerDeconverDTC(nnUNetTrainerDeconver):
    """``dtc_receptive_field``: input pixels per axis a DTC sample may cover (None: unrestricted)."""
    dtc_receptive_field: Optional[float] = 2.0

    @classmethod
    def network_kwargs(cls, plans_manager: PlansManager, configuration_manager: ConfigurationManager,
                       configuration_name: Optional[str] = None) -> dict:
        kwargs = super().network_kwargs(plans_manager, configuration_manager, configuration_name)
        kwargs.update(upsample="dtc", dtc_receptive_field=cls.dtc_receptive_field)
        return kwargs


class nnUNetTrainerDeconverDTC_rf4(nnUNetTrainerDeconverDTC):
    dtc_receptive_field = 4.0


class nnUNetTrainerDeconverDTC_rf10(nnUNetTrainerDeconverDTC):
    dtc_receptive_field = 10.0


class nnUNetTrainerDeconverDTC_rfUnrestricted(nnUNetTrainerDeconverDTC):
    dtc_receptive_field = None

