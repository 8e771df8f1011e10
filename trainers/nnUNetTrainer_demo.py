import torch

from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

from nnunetv2_deconver.demo_budget import apply_demo_budget


class nnUNetTrainer_demo(nnUNetTrainer):
    """Stock nnU-Net with the demo's short budget, the baseline of ``nnunetv2_deconver demo``.

    The budget is read from the environment, because nnU-Net's constructor signature admits no
    extra argument: ``NNUNETV2_DECONVER_DEMO_EPOCHS`` (default 4) and
    ``NNUNETV2_DECONVER_DEMO_ITERATIONS`` (training iterations per epoch, default 6). A checkpoint
    is kept every epoch so an interrupted demo resumes, and test-time mirroring is off at inference.
    """

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        super().__init__(plans, configuration, fold, dataset_json, device)
        apply_demo_budget(self)

    def configure_rotation_dummyDA_mirroring_and_inital_patch_size(self):
        rotation_for_DA, do_dummy_2d_data_aug, initial_patch_size, _ = \
            super().configure_rotation_dummyDA_mirroring_and_inital_patch_size()
        self.inference_allowed_mirroring_axes = None
        return rotation_for_DA, do_dummy_2d_data_aug, initial_patch_size, None
