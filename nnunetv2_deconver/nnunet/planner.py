"""Deconver plans (``nnUNetDeconverPlans.json``) written beside a dataset's ``nnUNetPlans.json``: the work of
``nnUNetv2_deconver_plan`` (its command line is :mod:`nnunetv2_deconver.tools.plan`).

nnU-Net's planners cannot be plugged in by name, so this derives Deconver plans from the stock ones:
the same spacing, normalisation and preprocessed data (the ``data_identifier`` is kept, nothing is
re-preprocessed), the same stages, strides and kernel sizes, and the dataset-independent Deconver settings
of a fragment of ``plans_overrides/`` (default ``deconver_k3``; ``-kernel 5``: ``deconver_k5``;
``-fragment``: another), with the paper's widths ``min(C0 * 2^l, 512)`` and the patch and batch size that
the Deconver memory model (``nnunetv2_deconver.nnunet.memory_model``) fits into the GPU memory target.
It never writes over nnU-Net's own plans, nor over a file it did not write itself (``--force`` for the
latter). Then ``nnUNetv2_train D CONFIG FOLD -tr nnUNetTrainerDeconver -p nnUNetDeconverPlans``.
"""
import copy
import os
import re
from typing import Callable, List, Optional

import numpy as np

from nnunetv2_deconver.nnunet.files import FileBusyError, exclusive, load_json, write_json_atomic
from nnunetv2_deconver.nnunet.plans import (DEFAULT_FRAGMENTS, PlanError, check_deconver_kwargs, fill_fragment,
                                            load_fragment)
from nnunetv2_deconver.network.deconver import stride_divisor
from nnunetv2_deconver.ops import is_integer, is_number

__all__ = ["deconver_configuration", "plan_dataset", "check_plans_name", "check_options", "MARKER"]

SUPPORTED = ("2d", "3d_fullres", "3d_lowres")
MIN_BATCH_SIZE = 2  # nnU-Net's UNet_min_batch_size
MAX_DATASET_COVERED = 0.05  # nnU-Net's cap: one batch sees at most 5% of the dataset's voxels
MAX_BASE_CHANNELS = 512  # the paper's width cap: a larger C0 gives every stage 512 channels
# top-level key naming this command as the writer (nnU-Net reads plans by key and ignores unknown ones)
MARKER = "deconver_planner"
# plans files nnU-Net's own planners write: never replaced
_NNUNET_PLANS = re.compile(r"nnUNetPlans|nnUNetResEnc.*Plans")
# receives each progress line of the planning (the command prints them to stderr)
Progress = Callable[[str], None]


def _silent(line: str) -> None:
    pass


def _training_bytes(arch_kwargs: dict, input_channels: int, num_classes: int, patch_size, batch_size: int) -> float:
    import torch
    from nnunetv2_deconver.nnunet.memory_model import estimate_training_bytes
    from nnunetv2_deconver.network import Deconver
    with torch.device("meta"):
        network = Deconver(input_channels=input_channels, num_classes=num_classes, deep_supervision=True,
                           **arch_kwargs)
    n_parameters = sum(p.numel() for p in network.parameters())
    return estimate_training_bytes(network.compute_conv_feature_map_size(patch_size), n_parameters, batch_size)


def deconver_configuration(stock: dict, input_channels: int, num_classes: int, dataset_voxels: float,
                           gpu_memory_gb: float, base_channels: int = 32, fragment: Optional[dict] = None,
                           configuration_name: str = "3d_fullres", fragment_file: str = "deconver_k3") -> dict:
    """A Deconver plan configuration: the stock U-Net configuration ``stock`` (resolved), updated with the
    fragment (default ``deconver_k3``) filled from it, as nnU-Net merges a configuration with the one it
    inherits from; the result inherits nothing (``inherits_from`` dropped), so it stands alone.

    The patch starts at the stock patch and, while batch size 2 does not fit ``gpu_memory_gb``,
    loses one stride-product step on its largest axis (the stock planner's patch is already capped
    by the median image size, so it never grows). The batch size is then the most that fits, capped
    as nnU-Net caps it (5% of the dataset's voxels, at least 2).
    """
    fragment = load_fragment(DEFAULT_FRAGMENTS[3])[0] if fragment is None else fragment
    filled = fill_fragment(fragment, configuration_name, stock, base_channels)
    filled.pop("inherits_from", None)
    kwargs = filled["architecture"]["arch_kwargs"]
    check_deconver_kwargs(kwargs, configuration_name, fragment_file)
    target = gpu_memory_gb * 2 ** 30
    divisor = np.array(stride_divisor(kwargs["strides"]), dtype=np.int64)
    patch = np.array(stock["patch_size"], dtype=np.int64)
    while _training_bytes(kwargs, input_channels, num_classes, patch, MIN_BATCH_SIZE) > target:
        shrinkable = np.where(patch > divisor)[0]
        if len(shrinkable) == 0:
            raise PlanError(f"a {gpu_memory_gb:g} GB memory target cannot hold batch size {MIN_BATCH_SIZE} even at "
                            f"the smallest patch {divisor.tolist()}; raise -gpu_memory_target or lower -base_channels")
        axis = shrinkable[np.argmax(patch[shrinkable] / divisor[shrinkable])]
        patch[axis] -= divisor[axis]
    per_sample = _training_bytes(kwargs, input_channels, num_classes, patch, 1) - \
        _training_bytes(kwargs, input_channels, num_classes, patch, 0)
    fixed = _training_bytes(kwargs, input_channels, num_classes, patch, 0)
    batch = int((target - fixed) // per_sample)
    cap = round(dataset_voxels * MAX_DATASET_COVERED / np.prod(patch, dtype=np.float64))
    configuration = copy.deepcopy(stock)
    configuration.pop("inherits_from", None)
    configuration.update(filled)
    configuration["patch_size"] = patch.tolist()
    configuration["batch_size"] = max(min(batch, cap), MIN_BATCH_SIZE)
    return configuration


def check_plans_name(plans_name: str, source_plans: str, target: str, force: bool) -> None:
    """Raise PlanError unless writing ``target`` (``plans_name.json``) is safe: never nnU-Net's own plans
    or the source, and an existing file only where this command wrote it (or ``force``)."""
    if plans_name == source_plans or _NNUNET_PLANS.fullmatch(plans_name) or not plans_name or \
            os.sep in plans_name:
        raise PlanError(f"-overwrite_plans_name {plans_name!r} would replace nnU-Net's own or the source plans "
                        f"(-source_plans {source_plans}); choose another name, e.g. nnUNetDeconverPlans")
    if force or not os.path.exists(target):
        return
    try:
        existing = load_json(target)
    except ValueError:
        existing = None
    if not isinstance(existing, dict) or MARKER not in existing:
        raise PlanError(f"{target} exists and was not written by nnUNetv2_deconver_plan; choose another "
                        f"-overwrite_plans_name, or add --force to replace it")


def _load_json(path: str, what: str, fix: str) -> dict:
    try:
        loaded = load_json(path)
    except ValueError as error:
        raise PlanError(f"{error}; {fix}") from None
    if loaded is None:
        raise PlanError(f"{path} not found ({what}); {fix}")
    return loaded


def plan_dataset(dataset: str, configurations: List[str], gpu_memory_gb: float, base_channels: int = 32,
                 fragment: str = "deconver_k3", source_plans: str = "nnUNetPlans",
                 plans_name: str = "nnUNetDeconverPlans", force: bool = False, progress: Progress = _silent) -> str:
    """Write ``plans_name.json`` for ``dataset`` (id or name) from the fragment (a shipped name or a
    ``.json`` file); return its path. Everything is checked before the file is written, at once; each
    configuration's sizing and result go to ``progress`` as lines."""
    from nnunetv2.paths import nnUNet_preprocessed
    from nnunetv2.utilities.dataset_name_id_conversion import maybe_convert_to_dataset_name
    from nnunetv2_deconver import __version__
    check_options(gpu_memory_gb, base_channels)
    fragment_json, fragment_file = load_fragment(fragment)
    if not nnUNet_preprocessed.is_set():
        raise PlanError("nnUNet_preprocessed is not set; export it (see `nnunetv2_deconver env`)")
    try:
        name = maybe_convert_to_dataset_name(dataset)
    except (RuntimeError, ValueError):
        raise PlanError(f"dataset {dataset} not found under nnUNet_raw, nnUNet_preprocessed or nnUNet_results "
                        f"(nnUNet_preprocessed={nnUNet_preprocessed.get()}); check the id and the exports") from None
    folder = os.path.join(nnUNet_preprocessed.get(), name)
    target = os.path.join(folder, plans_name + ".json")
    check_plans_name(plans_name, source_plans, target, force)
    if not os.path.isdir(folder):
        raise PlanError(f"{folder} not found; run nnUNetv2_plan_and_preprocess -d {dataset} -c "
                        f"{' '.join(configurations)} first")
    try:
        with exclusive(target):  # two planners on one plans name: the second stops instead of both "writing"
            check_plans_name(plans_name, source_plans, target, force)  # again: the file may be new now
            return _plan_into(target, dataset, name, folder, configurations, gpu_memory_gb, base_channels,
                              fragment_json, fragment_file, source_plans, plans_name, __version__, progress)
    except FileBusyError as error:
        raise PlanError(f"{error} (two nnUNetv2_deconver_plan runs on one -overwrite_plans_name)") from None


def _plan_into(target: str, dataset: str, name: str, folder: str, configurations: List[str], gpu_memory_gb: float,
               base_channels: int, fragment_json: dict, fragment_file: str, source_plans: str, plans_name: str,
               version: str, progress: Progress) -> str:
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager
    source_file = os.path.join(folder, source_plans + ".json")
    plan_first = f"run nnUNetv2_plan_and_preprocess -d {dataset} -c {' '.join(configurations)} first"
    plans = _load_json(source_file, "the stock plans this command starts from", plan_first)
    dataset_json = _load_json(os.path.join(folder, "dataset.json"), "copied there by nnU-Net's planning", plan_first)
    unsupported = [c for c in configurations if c not in SUPPORTED]
    if unsupported:
        raise PlanError(f"configuration(s) {unsupported} not supported: Deconver plans are made for {SUPPORTED} "
                        f"({CASCADE} comes with -c 3d_lowres 3d_fullres)")
    missing = [c for c in configurations if c not in plans.get("configurations", {})]
    slices = (plans.get("original_median_shape_after_transp") or [None])[0]
    if missing and slices == 1 and all(c.startswith("3d") for c in missing):
        raise PlanError(f"{source_file} has no configuration {missing}: the images are single slices (median shape "
                        f"{plans['original_median_shape_after_transp']}), for which nnU-Net plans only 2d; "
                        f"use -c 2d")
    if missing:
        raise PlanError(f"{source_file} has no configuration {missing} (it has "
                        f"{sorted(plans.get('configurations', {}))}); {plan_first}")
    manager = PlansManager(copy.deepcopy(plans))
    num_classes = manager.get_label_manager(dataset_json).num_segmentation_heads
    input_channels = len(dataset_json.get("channel_names", dataset_json.get("modality", {})))
    out = copy.deepcopy(plans)
    out["plans_name"] = plans_name
    out[MARKER] = {"version": version, "source_plans": source_plans, "fragment": fragment_file,
                   "base_channels": base_channels, "gpu_memory_target": gpu_memory_gb}
    out["configurations"] = {}
    for c in configurations:
        stock = manager.get_configuration(c).configuration  # resolves "inherits_from"
        if "n_stages" not in stock.get("architecture", {}).get("arch_kwargs", {}):
            raise PlanError(f"{source_file}: configuration '{c}' is not a U-Net plan; Deconver plans start from "
                            f"nnU-Net's U-Net plans (nnUNetPlans or nnUNetResEnc*Plans)")
        progress(f"{name} {c}: sizing Deconver for {gpu_memory_gb:g} GB ...")
        # nnU-Net's 5% cap counts whole volumes: a 2d configuration's median is one slice, times the slices
        voxels_per_case = np.prod(stock["median_image_size_in_voxels"], dtype=np.float64)
        if len(stock["patch_size"]) == 2:
            voxels_per_case *= plans["original_median_shape_after_transp"][0]
        configuration = deconver_configuration(stock, input_channels, num_classes,
                                               voxels_per_case * dataset_json["numTraining"], gpu_memory_gb,
                                               base_channels, fragment_json, c, fragment_file)
        out["configurations"][c] = configuration
        data = os.path.join(folder, configuration["data_identifier"])
        reuse = "reuses" if os.path.isdir(data) else "will read (not preprocessed yet: run nnUNetv2_preprocess)"
        progress(f"  patch {configuration['patch_size']} (stock {stock['patch_size']}), batch "
                 f"{configuration['batch_size']} (stock {stock['batch_size']}), widths "
                 f"{configuration['architecture']['arch_kwargs']['features_per_stage']}; {reuse} {data} "
                 f"(spacing unchanged)")
    _link_cascade(out["configurations"], plans.get("configurations", {}), name, progress)
    write_json_atomic(out, target)
    return target


CASCADE = "3d_cascade_fullres"


def _link_cascade(configurations: dict, stock_configurations: dict, dataset_name: str, progress: Progress) -> None:
    """Keep nnU-Net's cascade consistent: with ``3d_lowres`` and ``3d_fullres`` planned, the stock plans'
    ``3d_cascade_fullres`` (the Deconver ``3d_fullres`` fed the ``3d_lowres`` prediction); with ``3d_lowres``
    alone, no ``next_stage`` (nnU-Net's final validation of ``3d_lowres`` would predict for a stage the
    plans lack, and fail after training)."""
    lowres = configurations.get("3d_lowres")
    if lowres is None or not lowres.get("next_stage"):
        return
    cascade = stock_configurations.get(CASCADE)
    if "3d_fullres" in configurations and isinstance(cascade, dict) and \
            cascade.get("inherits_from") == "3d_fullres" and cascade.get("previous_stage") == "3d_lowres":
        configurations[CASCADE] = {"inherits_from": "3d_fullres", "previous_stage": "3d_lowres"}
        lowres["next_stage"] = CASCADE
        progress(f"{dataset_name} {CASCADE}: the Deconver 3d_fullres fed the 3d_lowres prediction")
        return
    lowres.pop("next_stage")
    progress(f"{dataset_name} 3d_lowres: no {CASCADE} (plan -c 3d_lowres 3d_fullres for the cascade)")


def check_options(gpu_memory_gb, base_channels) -> None:
    """Raise PlanError unless the memory target is a finite number of GB > 0 and C0 an integer in 1..512."""
    if not is_number(gpu_memory_gb) or gpu_memory_gb <= 0:
        raise PlanError(f"-gpu_memory_target must be a finite number of GB > 0 (e.g. 8, nnU-Net's reference), "
                        f"got {gpu_memory_gb}")
    if not is_integer(base_channels) or not 1 <= base_channels <= MAX_BASE_CHANNELS:
        raise PlanError(f"-base_channels must be an integer from 1 to {MAX_BASE_CHANNELS} (the paper: 32 or 64), "
                        f"got {base_channels}")
