"""Deconver with DTC in its decoder: each transposed conv becomes the base of a deformable transposed
convolution (``Deconver(upsample="dtc")``); training as ``nnUNetTrainerDeconver``."""
from nnunetv2_deconver.trainers.nnUNetTrainerDeconver import nnUNetTrainerDeconver


class nnUNetTrainerDeconverDTC(nnUNetTrainerDeconver):
    """DTC of receptive field 2 (``dtc_receptive_field``: input pixels per axis a DTC sample may cover); the
    variants below take 4, 10 and None (unrestricted)."""
    network_overrides = {"upsample": "dtc", "dtc_receptive_field": 2.0}


class nnUNetTrainerDeconverDTC_rf4(nnUNetTrainerDeconverDTC):
    network_overrides = {**nnUNetTrainerDeconverDTC.network_overrides, "dtc_receptive_field": 4.0}


class nnUNetTrainerDeconverDTC_rf10(nnUNetTrainerDeconverDTC):
    network_overrides = {**nnUNetTrainerDeconverDTC.network_overrides, "dtc_receptive_field": 10.0}


class nnUNetTrainerDeconverDTC_rfUnrestricted(nnUNetTrainerDeconverDTC):
    network_overrides = {**nnUNetTrainerDeconverDTC.network_overrides, "dtc_receptive_field": None}
