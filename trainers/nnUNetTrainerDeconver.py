"""Deconver in nnU-Net's training pipeline: the paper's optimiser and schedule at a learning rate measured for
nnU-Net's step counts."""
from typing import Dict, List, Optional

import torch
from torch import nn

from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
from nnunetv2.utilities.plans_handling.plans_handler import ConfigurationManager, PlansManager

from nnunetv2_deconver.network import Deconver
from nnunetv2_deconver.nnunet.checks import TrainingDivergedError, check_prediction_inputs, check_training_finite
from nnunetv2_deconver.nnunet.network_options import merge_network_options
from nnunetv2_deconver.nnunet.plans import (check_deconver_kwargs, check_patch_divisible, configuration_name_of,
                                            deconver_kwargs_from_configuration, is_deconver, plans_file_of)
from nnunetv2_deconver.nnunet.lr_scheduler import adamw_warmup_cosine
from nnunetv2_deconver.nnunet.trainer_mixins import AtomicCheckpoints, PeakGPUMemoryLog
from nnunetv2_deconver.nnunet.allocator import tune_on_first_cpu_forward


class nnUNetTrainerDeconver(AtomicCheckpoints, PeakGPUMemoryLog, nnUNetTrainer):
    """nnU-Net's trainer with Deconver as the network.

    With a U-Net plan (e.g. the stock ``nnUNetPlans``) Deconver takes that plan's stages, widths,
    kernel sizes and strides at the plan's patch and batch size; with a plan whose
    ``network_class_name`` is Deconver (``nnUNetDeconverPlans``) it takes that plan's arguments.
    Optimiser: AdamW, lr 1e-3, weight decay 1e-5, cosine annealing after a 1% linear warm-up: the paper's
    recipe (Sec. IV-A3) with ten times its lr 1e-4, which learned far more slowly at nnU-Net's step counts in
    the recipe study on real data (``docs/recipe_study.md``); ``nnUNetTrainerDeconverPaper`` keeps lr 1e-4.

    Subclasses change the network through the class attributes ``ndc_kernel_size`` and
    ``network_overrides`` (Deconver arguments set whatever the plan says; a Deconver plan's own value
    replaced gives a ``PlanValueOverridden`` warning), merged with the plan in one place
    (``nnunetv2_deconver.nnunet.network_options``); they are class-level because inference builds the
    network from the class without an instance.

    Checks beyond nnU-Net's: every network value of the plan before any output folder exists
    (``PlanError`` naming the plans file and configuration); a training loss or weights that are no
    longer finite stop training at the end of that epoch, before its checkpoints
    (``TrainingDivergedError``; stock nnU-Net trains on and saves NaN weights); and under
    ``nnUNetv2_predict`` the input folder's channel files (``check_prediction_inputs``). On a GPU each
    epoch's peak memory goes to the training log (``PeakGPUMemoryLog``), as ``nnUNetTrainerWithMemoryLog``
    does for stock nnU-Net, for ``nnunetv2_deconver compare``. Checkpoints are written to a temporary file
    and renamed (``AtomicCheckpoints``): a failed write never truncates a good ``checkpoint_best.pth``.
    """
    network_class = Deconver
    # None: the plan's kernel sizes; an int replaces every NDC kernel axis > 1 (the stem keeps the plan's)
    ndc_kernel_size: Optional[int] = None
    # Deconver arguments this trainer sets over the plan's, e.g. {"upsample": "dtc"}
    network_overrides: Dict[str, object] = {}

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        # a plan Deconver cannot take fails here, before the base class creates output folders
        plans_manager = PlansManager(plans)
        self.network_kwargs(plans_manager, plans_manager.get_configuration(configuration), configuration)
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.initial_lr = 1e-3
        self.weight_decay = 1e-5
        self.warmup_fraction = 0.01

    @classmethod
    def network_kwargs(cls, plans_manager: PlansManager, configuration_manager: ConfigurationManager,
                       configuration_name: Optional[str] = None) -> dict:
        """Deconver's arguments for this plan (no channels, classes or deep supervision); checked."""
        plans_file = plans_file_of(plans_manager)
        name = configuration_name or configuration_name_of(plans_manager, configuration_manager)
        architecture = configuration_manager.configuration["architecture"]
        kwargs = merge_network_options(deconver_kwargs_from_configuration(architecture, name, plans_file),
                                       cls.ndc_kernel_size, cls.network_overrides,
                                       is_deconver(architecture.get("network_class_name", "")), cls.__name__, name,
                                       plans_file)
        check_deconver_kwargs(kwargs, name, plans_file)
        check_patch_divisible(configuration_manager.patch_size, kwargs["strides"], name, plans_file)
        return kwargs

    @classmethod
    def build_network_architecture(cls, plans_manager: PlansManager, configuration_manager: ConfigurationManager,
                                   num_input_channels: int, num_output_channels: int,
                                   enable_deep_supervision: bool = True) -> nn.Module:
        # a classmethod rather than nnU-Net's staticmethod so that subclasses reach their own hooks;
        # nnU-Net calls it the same way on the class (inference) and on the instance (training)
        if not enable_deep_supervision:
            check_prediction_inputs()  # acts only inside nnUNetv2_predict(_from_modelfolder)
        network = cls.network_class(input_channels=num_input_channels, num_classes=num_output_channels,
                                    deep_supervision=enable_deep_supervision,
                                    **cls.network_kwargs(plans_manager, configuration_manager))
        return tune_on_first_cpu_forward(network)  # on the CPU, glibc keeps freed activation buffers

    def configure_optimizers(self):
        return adamw_warmup_cosine(self)

    def on_train_epoch_end(self, train_outputs: List[dict]):
        super().on_train_epoch_end(train_outputs)
        try:
            check_training_finite(self.current_epoch, float(self.logger.get_value("train_losses", step=-1)),
                                  self.network.parameters(), self.optimizer.param_groups[0]["lr"])
        except TrainingDivergedError as error:
            self.print_to_log_file(str(error))
            for loader in (self.dataloader_train, self.dataloader_val):  # background augmentation workers
                if hasattr(loader, "_finish"):
                    loader._finish()
            raise
