from nnunetv2_deconver.trainers.nnUNetTrainerDeconver import nnUNetTrainerDeconver


class nnUNetTrainerDeconver_k5(nnUNetTrainerDeconver):
    """NDC kernel 5 on every axis the plan convolves (paper Tables I-III, "k = 5"); axes of size 1 stay 1."""
    ndc_kernel_size = 5
