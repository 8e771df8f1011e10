"""The optimiser and schedule each trainer really builds (nnU-Net's own ``initialize``), the learning rate
after a ``--c`` resume (nnU-Net's own ``save_checkpoint`` / ``load_checkpoint`` / ``on_train_epoch_start``),
and a checkpoint write that fails half way."""
import copy
import errno
import math

import pytest
import torch

from nnunetv2.training.lr_scheduler.polylr import PolyLRScheduler

from nnunetv2_deconver.nnunet.lr_scheduler import WarmupCosineLRScheduler
from nnunetv2_deconver.trainers.nnUNetTrainerDeconver import nnUNetTrainerDeconver
from nnunetv2_deconver.trainers.variants.benchmarking.nnUNetTrainerWithMemoryLog import nnUNetTrainerWithMemoryLog
from nnunetv2_deconver.trainers.variants.network_architecture.nnUNetTrainerDeconverCheckpointed import \
    nnUNetTrainerDeconverCheckpointed
from nnunetv2_deconver.trainers.variants.network_architecture.nnUNetTrainerDeconverNoDeepSupervision import \
    nnUNetTrainerDeconverNoDeepSupervision
from nnunetv2_deconver.trainers.variants.network_architecture.nnUNetTrainerDeconver_k5 import nnUNetTrainerDeconver_k5
from nnunetv2_deconver.trainers.variants.network_architecture.nnUNetTrainerUNetDTC import nnUNetTrainerUNetDTC
from nnunetv2_deconver.trainers.variants.optimizer.nnUNetTrainerDeconverPaper import nnUNetTrainerDeconverPaper
from nnunetv2_deconver.trainers.variants.optimizer.nnUNetTrainerDeconverSGD import nnUNetTrainerDeconverSGD

ARCH = {"n_stages": 3, "features_per_stage": [8, 16, 32], "conv_op": "torch.nn.modules.conv.Conv3d",
        "kernel_sizes": [[3, 3, 3]] * 3, "strides": [[1, 1, 1], [2, 2, 2], [2, 2, 2]],
        "n_conv_per_stage": [2, 2, 2], "n_conv_per_stage_decoder": [2, 2], "conv_bias": True,
        "norm_op": "torch.nn.modules.instancenorm.InstanceNorm3d", "norm_op_kwargs": {"eps": 1e-5, "affine": True},
        "dropout_op": None, "dropout_op_kwargs": None, "nonlin": "torch.nn.LeakyReLU",
        "nonlin_kwargs": {"inplace": True}}
PLANS = {"dataset_name": "Dataset998_Setup", "plans_name": "nnUNetPlans", "image_reader_writer": "SimpleITKIO",
         "transpose_forward": [0, 1, 2], "transpose_backward": [0, 1, 2],
         "original_median_spacing_after_transp": [1.0, 1.0, 1.0], "original_median_shape_after_transp": [16, 16, 16],
         "label_manager": "LabelManager", "foreground_intensity_properties_per_channel": {},
         "configurations": {"3d_fullres": {
             "data_identifier": "nnUNetPlans_3d_fullres", "preprocessor_name": "DefaultPreprocessor", "batch_size": 2,
             "patch_size": [16, 16, 16], "median_image_size_in_voxels": [16, 16, 16], "spacing": [1.0, 1.0, 1.0],
             "normalization_schemes": ["ZScoreNormalization"], "use_mask_for_norm": [False], "batch_dice": False,
             "architecture": {"network_class_name": "dynamic_network_architectures.architectures.unet.PlainConvUNet",
                              "arch_kwargs": ARCH,
                              "_kw_requires_import": ["conv_op", "norm_op", "dropout_op", "nonlin"]}}}}
DATASET = {"channel_names": {"0": "MRI"}, "labels": {"background": 0, "ball": 1}, "numTraining": 4,
           "file_ending": ".nii.gz"}

# the default: the paper's AdamW, weight decay and schedule at lr 1e-3 (docs/recipe_study.md); the paper's lr 1e-4
ADAMW = (torch.optim.AdamW, WarmupCosineLRScheduler, dict(lr=1e-3, weight_decay=1e-5))
PAPER = (torch.optim.AdamW, WarmupCosineLRScheduler, dict(lr=1e-4, weight_decay=1e-5))
# nnU-Net's own: SGD, Nesterov momentum 0.99, lr 1e-2, weight decay 3e-5, poly decay
SGD = (torch.optim.SGD, PolyLRScheduler, dict(lr=1e-2, weight_decay=3e-5, momentum=0.99, nesterov=True))
EXPECTED = {nnUNetTrainerDeconver: ADAMW, nnUNetTrainerDeconverCheckpointed: ADAMW,
            nnUNetTrainerDeconverNoDeepSupervision: ADAMW, nnUNetTrainerDeconver_k5: ADAMW,
            nnUNetTrainerDeconverSGD: SGD, nnUNetTrainerDeconverPaper: PAPER}


def _warmup_cosine_lr(epoch, lr, num_epochs=1000):
    """Sec. IV-A3 written out for 1000 epochs: 10 warm-up epochs from lr/10, then a half cosine to 0."""
    if epoch < 10:
        return lr * (0.1 + 0.9 * epoch / 10)
    return lr / 2 * (1 + math.cos(math.pi * (epoch - 10) / (num_epochs - 10)))


def _poly_lr(epoch, num_epochs=1000, lr=1e-2):
    return lr * (1 - epoch / num_epochs) ** 0.9


@pytest.fixture
def nnunet_folders(tmp_path, monkeypatch):
    for name in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results"):  # nnU-Net reads them at each use
        monkeypatch.setenv(name, str(tmp_path / name))
    # initialize() picks the dataset class from the preprocessed files' ending; one empty case file says which
    data = tmp_path / "nnUNet_preprocessed" / PLANS["dataset_name"] / "nnUNetPlans_3d_fullres"
    data.mkdir(parents=True)
    (data / "case_000.b2nd").touch()
    return tmp_path


def _trainer(cls, continue_training=False):
    # as nnunetv2_train passes them (run_training.get_trainer_from_args): the plans with the --c flag in them
    plans = dict(copy.deepcopy(PLANS), continue_training=continue_training)
    trainer = cls(plans, "3d_fullres", 0, DATASET, device=torch.device("cpu"))
    trainer.initialize()
    return trainer


@pytest.mark.parametrize("cls", list(EXPECTED), ids=lambda c: c.__name__)
def test_optimizer_and_schedule_each_trainer_builds(nnunet_folders, cls):
    optimizer_type, scheduler_type, hyperparameters = EXPECTED[cls]
    trainer = _trainer(cls)
    assert type(trainer.optimizer) is optimizer_type
    assert type(trainer.lr_scheduler) is scheduler_type
    for key, value in hyperparameters.items():
        assert trainer.optimizer.defaults[key] == value, key
    # the optimiser holds exactly the network's parameters
    assert {id(p) for g in trainer.optimizer.param_groups for p in g["params"]} == \
        {id(p) for p in trainer.network.parameters()}


@pytest.mark.parametrize("cls,schedule", [(nnUNetTrainerDeconver, lambda epoch: _warmup_cosine_lr(epoch, 1e-3)),
                                          (nnUNetTrainerDeconverPaper, lambda epoch: _warmup_cosine_lr(epoch, 1e-4)),
                                          (nnUNetTrainerDeconverSGD, _poly_lr)],
                         ids=["AdamW-1e-3-warmup-cosine", "AdamW-1e-4-warmup-cosine", "SGD-poly"])
@pytest.mark.parametrize("epoch", [3, 400])
def test_learning_rate_after_resume_is_the_schedule_at_that_epoch(nnunet_folders, cls, schedule, epoch):
    trainer = _trainer(cls)
    assert trainer.num_epochs == 1000
    trainer.current_epoch = epoch - 1  # checkpoint_latest as written at the end of the epoch before
    path = str(nnunet_folders / "checkpoint_latest.pth")
    trainer.save_checkpoint(path)
    resumed = _trainer(cls, continue_training=True)
    resumed.load_checkpoint(path)
    assert resumed.current_epoch == epoch
    resumed.on_train_epoch_start()
    for group in resumed.optimizer.param_groups:
        assert group["lr"] == pytest.approx(schedule(epoch), rel=1e-12)


@pytest.mark.parametrize("cls", [nnUNetTrainerDeconver, nnUNetTrainerWithMemoryLog, nnUNetTrainerUNetDTC],
                         ids=lambda c: c.__name__)
def test_a_failed_checkpoint_write_leaves_the_good_checkpoint(nnunet_folders, monkeypatch, cls):
    trainer = _trainer(cls)
    path = nnunet_folders / "checkpoint_best.pth"
    trainer.save_checkpoint(str(path))
    good = path.read_bytes()

    def disk_full(obj, f, *args, **kwargs):  # half a file, then the error a full disk gives
        with open(f, "wb") as handle:
            handle.write(good[: len(good) // 2])
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(torch, "save", disk_full)
    trainer.current_epoch += 1
    with pytest.raises(OSError, match="No space left"):
        trainer.save_checkpoint(str(path))
    assert path.read_bytes() == good
    assert sorted(p.name for p in nnunet_folders.iterdir() if p.is_file()) == ["checkpoint_best.pth"]
