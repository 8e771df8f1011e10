"""Mixins for any nnU-Net trainer: short training schedules for tests and the demo, checkpoints that a
failed write cannot truncate, and the peak GPU memory of every epoch in the training log.

A mixin goes first in the bases (``class X(SmokeRun, nnUNetTrainerDeconver)``). Its constructor has
nnU-Net's exact signature, because nnU-Net records a trainer's init arguments from that signature.
The demo passes its budget to its ``nnUNetv2_train`` subprocesses through environment variables, as
the constructor admits no extra argument.
"""
import math
import os
import random

import numpy as np
import torch

from nnunetv2_deconver.nnunet.lr_scheduler import adamw_warmup_cosine

__all__ = ["AtomicCheckpoints", "PeakGPUMemoryLog", "PEAK_MEMORY_LOG_PREFIX", "WithoutTestTimeMirroring", "SmokeRun",
           "DemoRun", "GradScalerSkipLog", "SKIPPED_STEPS_LOG_PREFIX", "TimedRun", "EPOCHS_VARIABLE",
           "ITERATIONS_VARIABLE", "DEFAULT_EPOCHS", "DEFAULT_ITERATIONS", "StudyRun", "STUDY_PREFIX", "study_recipe",
           "seed_everything"]

EPOCHS_VARIABLE = "NNUNETV2_DECONVER_DEMO_EPOCHS"
ITERATIONS_VARIABLE = "NNUNETV2_DECONVER_DEMO_ITERATIONS"
DEFAULT_EPOCHS = 10
DEFAULT_ITERATIONS = 20
PEAK_MEMORY_LOG_PREFIX = "Peak GPU memory:"  # nnUNetv2_deconver_compare reads these lines
SKIPPED_STEPS_LOG_PREFIX = "GradScaler skipped steps:"  # benchmarks/gpu_suite.py reads these lines


def seed_everything(seed: int) -> None:
    """Seed Python's, numpy's and torch's generators: the weights, the patch sampling and the augmentation
    of a training process (its data-augmentation workers are seeded by nnU-Net from these)."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


class AtomicCheckpoints:
    """Checkpoints written to a temporary file beside the target, then renamed over it.

    nnU-Net's ``save_checkpoint`` writes ``checkpoint_best.pth`` in place: a write that fails half way
    (a full disk, a quota, a kill) leaves a truncated file where a good checkpoint was. Here the good one
    stays until the new one is complete; a failed write removes its temporary file and raises as before.
    """

    def save_checkpoint(self, filename: str) -> None:
        folder, name = os.path.split(os.path.abspath(filename))
        temporary = os.path.join(folder, f".{name}.{os.getpid()}.tmp")
        try:
            super().save_checkpoint(temporary)
            if os.path.isfile(temporary):  # nothing is written on other ranks or with checkpointing disabled
                os.replace(temporary, filename)
        finally:
            if os.path.exists(temporary):
                os.remove(temporary)


class PeakGPUMemoryLog:
    """Log the epoch's peak GPU memory, ``Peak GPU memory: X MiB``, in nnU-Net's training log.

    X is the most memory the epoch's tensors held at once on the training GPU
    (``torch.cuda.max_memory_allocated``, training and validation iterations), in MiB (2**20 bytes);
    the peak is reset when an epoch starts. On a CPU or another device nothing is logged: there is no
    GPU memory to report, and a 0 would read as a measurement.
    """

    def _on_cuda(self) -> bool:
        return self.device.type == "cuda"

    def on_epoch_start(self):
        if self._on_cuda():
            torch.cuda.reset_peak_memory_stats(self.device)
        super().on_epoch_start()

    def on_epoch_end(self):
        if self._on_cuda():
            peak_mib = torch.cuda.max_memory_allocated(self.device) / 2 ** 20
            self.print_to_log_file(f"{PEAK_MEMORY_LOG_PREFIX} {peak_mib:.0f} MiB")
        super().on_epoch_end()


class WithoutTestTimeMirroring:
    """No mirroring at validation and inference: it multiplies inference cost by 4 (2D) or 8 (3D)."""

    def configure_rotation_dummyDA_mirroring_and_inital_patch_size(self):
        rotation_for_DA, do_dummy_2d_data_aug, initial_patch_size, _ = \
            super().configure_rotation_dummyDA_mirroring_and_inital_patch_size()
        self.inference_allowed_mirroring_axes = None
        return rotation_for_DA, do_dummy_2d_data_aug, initial_patch_size, None


class FixedBudget(WithoutTestTimeMirroring):
    """A fixed training length for tests: ``budget = (epochs, training iterations, validation iterations)``
    per epoch, set by each subclass."""

    budget: tuple

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.num_epochs, self.num_iterations_per_epoch, self.num_val_iterations_per_epoch = self.budget


class SmokeRun(FixedBudget):
    """One epoch of 2 training and 1 validation iteration: the whole pipeline (training, checkpoints,
    final validation, inference) in seconds on a CPU, for tests."""

    budget = (1, 2, 1)


class DemoRun(WithoutTestTimeMirroring):
    """The demo's budget: ``NNUNETV2_DECONVER_DEMO_EPOCHS`` epochs (default 10) of
    ``NNUNETV2_DECONVER_DEMO_ITERATIONS`` training iterations (default 20; validation a fifth of that,
    at least 1), with a checkpoint every epoch so an interrupted demo resumes."""

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.num_epochs = int(os.environ.get(EPOCHS_VARIABLE, DEFAULT_EPOCHS))
        self.num_iterations_per_epoch = int(os.environ.get(ITERATIONS_VARIABLE, DEFAULT_ITERATIONS))
        self.num_val_iterations_per_epoch = max(1, self.num_iterations_per_epoch // 5)
        self.save_every = 1


class GradScalerSkipLog:
    """Log how many of the epoch's optimiser steps the GradScaler skipped, ``GradScaler skipped steps: N of
    M (scale S)``: a step is skipped when its fp16 gradients held an inf or NaN, which the scaler answers by
    lowering its scale. Nothing is logged without a scaler (CPU training)."""

    def on_epoch_start(self):
        self.skipped_steps, self.scaled_steps = 0, 0
        super().on_epoch_start()

    def train_step(self, batch: dict) -> dict:
        scaler = self.grad_scaler
        if scaler is None or not scaler.is_enabled():
            return super().train_step(batch)
        before = scaler.get_scale()
        result = super().train_step(batch)
        self.scaled_steps += 1
        self.skipped_steps += scaler.get_scale() < before
        return result

    def on_epoch_end(self):
        if self.grad_scaler is not None and self.grad_scaler.is_enabled():
            self.print_to_log_file(f"{SKIPPED_STEPS_LOG_PREFIX} {self.skipped_steps} of {self.scaled_steps} "
                                   f"(scale {self.grad_scaler.get_scale():g})")
        super().on_epoch_end()


class TimedRun(GradScalerSkipLog, DemoRun):
    """The demo's budget (``DemoRun``: epochs and iterations from the environment) with the GradScaler's
    skipped steps in the log and no final validation: a short run that measures training only."""

    def perform_actual_validation(self, save_probabilities: bool = False):
        self.print_to_log_file("Final validation skipped (TimedRun measures training only)")


STUDY_PREFIX = "NNUNETV2_DECONVER_STUDY_"
# recipe key -> (parser, check, what a valid value is); every key is optional: unset keeps the trainer's own
_STUDY_KEYS = {
    "EPOCHS": (int, lambda v: v >= 1, "an integer >= 1"),
    "ITERATIONS": (int, lambda v: v >= 1, "an integer >= 1"),
    "SEED": (int, lambda v: True, "an integer"),
    "LR": (float, lambda v: math.isfinite(v) and v > 0, "a finite number > 0"),
    "WARMUP": (float, lambda v: 0 <= v <= 1, "a fraction from 0 to 1"),
    "OPTIMIZER": (str, lambda v: v in ("adamw", "sgd"), "'adamw' (warm-up, cosine) or 'sgd' (nnU-Net's: poly)"),
    "DEEP_SUPERVISION": (int, lambda v: v in (0, 1), "0 or 1"),
}


def study_recipe(environ=None) -> dict:
    """The recipe a study run takes from ``NNUNETV2_DECONVER_STUDY_<KEY>`` variables (keys of ``_STUDY_KEYS``,
    lower-cased); ValueError naming the variable for a value outside its range."""
    environ = os.environ if environ is None else environ
    recipe = {}
    for key, (parse, check, valid) in _STUDY_KEYS.items():
        text = environ.get(STUDY_PREFIX + key)
        if text is None:
            continue
        try:
            value = parse(text)
        except ValueError:
            value = None
        if value is None or not check(value):
            raise ValueError(f"{STUDY_PREFIX}{key} must be {valid}, got {text!r}")
        recipe[key.lower()] = value
    return recipe


class StudyRun(GradScalerSkipLog):
    """A run of a recipe study (``benchmarks/recipe_study.py``): budget, optimiser, learning rate, warm-up,
    deep supervision and seed from :func:`study_recipe`, everything else the base trainer's (its final
    sliding-window validation with test-time mirroring included), and each epoch's GradScaler skips in the
    log. Validation iterations per epoch: a fifth of the training iterations, at least 1."""

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        super().__init__(plans, configuration, fold, dataset_json, device)
        recipe = self.study_recipe = study_recipe()
        self.num_epochs = recipe.get("epochs", self.num_epochs)
        self.num_iterations_per_epoch = recipe.get("iterations", self.num_iterations_per_epoch)
        self.num_val_iterations_per_epoch = max(1, self.num_iterations_per_epoch // 5)
        self.initial_lr = recipe.get("lr", self.initial_lr)
        self.warmup_fraction = recipe.get("warmup", getattr(self, "warmup_fraction", 0.01))
        if "deep_supervision" in recipe:
            self.enable_deep_supervision = bool(recipe["deep_supervision"])

    def initialize(self):
        if "seed" in self.study_recipe:  # before the network's weights are drawn
            seed_everything(self.study_recipe["seed"])
        super().initialize()

    def configure_optimizers(self):
        optimizer = self.study_recipe.get("optimizer")
        if optimizer == "sgd":
            from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
            return nnUNetTrainer.configure_optimizers(self)
        if optimizer == "adamw":
            return adamw_warmup_cosine(self)
        return super().configure_optimizers()
