"""``nnUNetv2_deconver_plan``: write ``nnUNetDeconverPlans.json`` beside a dataset's ``nnUNetPlans.json``.

nnU-Net's planners cannot be plugged in by name, so this derives Deconver plans from the stock ones:
the same spacing, normalisation and preprocessed data (the ``data_identifier`` is kept, nothing is
re-preprocessed), the same stages, strides and kernel sizes, the paper's widths ``min(C0 * 2^l, 512)``,
and the patch and batch size that the Deconver memory model (``nnunetv2_deconver.nnunet.memory_model``) fits into
the GPU memory target. Then ``nnUNetv2_train D CONFIG FOLD -tr nnUNetTrainerDeconver -p nnUNetDeconverPlans``.
"""
import argparse
import copy
import os
import sys
from typing import List

import numpy as np

from nnunetv2_deconver.nnunet.files import load_json, write_json_atomic
from nnunetv2_deconver.nnunet.plans import DECONVER_CLASS_NAME, PlanError, replace_kernel
from nnunetv2_deconver.network.deconver import stride_divisor
from nnunetv2_deconver.network.presets import paper_widths

__all__ = ["deconver_configuration", "plan_dataset", "main"]

SUPPORTED = ("2d", "3d_fullres", "3d_lowres")
MIN_BATCH_SIZE = 2  # nnU-Net's UNet_min_batch_size
MAX_DATASET_COVERED = 0.05  # nnU-Net's cap: one batch sees at most 5% of the dataset's voxels


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
                           gpu_memory_gb: float, base_channels: int = 32, kernel: int = 3) -> dict:
    """A Deconver plan configuration derived from a stock U-Net configuration.

    The patch starts at the stock patch and, while batch size 2 does not fit ``gpu_memory_gb``,
    loses one stride-product step on its largest axis (the stock planner's patch is already capped
    by the median image size, so it never grows). The batch size is then the most that fits, capped
    as nnU-Net caps it (5% of the dataset's voxels, at least 2).
    """
    arch = stock["architecture"]["arch_kwargs"]
    n_stages = arch["n_stages"]
    kwargs = {"n_stages": n_stages, "features_per_stage": paper_widths(base_channels, n_stages),
              "conv_op": arch["conv_op"], "kernel_sizes": replace_kernel(arch["kernel_sizes"], kernel),
              "strides": [list(s) for s in arch["strides"]], "ndc_ratio": 4, "mlp_ratio": 4,
              "n_blocks_per_stage": 1, "n_blocks_per_stage_decoder": 1,
              "stem_kernel_size": list(arch["kernel_sizes"][0])}
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
    batch = max(min(batch, cap), MIN_BATCH_SIZE)
    configuration = copy.deepcopy(stock)
    configuration["patch_size"] = patch.tolist()
    configuration["batch_size"] = batch
    configuration["architecture"] = {"network_class_name": DECONVER_CLASS_NAME, "arch_kwargs": kwargs,
                                     "_kw_requires_import": ["conv_op"]}
    return configuration


def _load_json(path: str, what: str, fix: str) -> dict:
    try:
        loaded = load_json(path)
    except ValueError as error:
        raise PlanError(f"{error}; {fix}") from None
    if loaded is None:
        raise PlanError(f"{path} not found ({what}); {fix}")
    return loaded


def plan_dataset(dataset: str, configurations: List[str], gpu_memory_gb: float, base_channels: int = 32,
                 kernel: int = 3, source_plans: str = "nnUNetPlans", plans_name: str = "nnUNetDeconverPlans") -> str:
    """Write ``plans_name.json`` for ``dataset`` (id or name); return its path."""
    from nnunetv2.paths import nnUNet_preprocessed
    from nnunetv2.utilities.dataset_name_id_conversion import maybe_convert_to_dataset_name
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager
    if not nnUNet_preprocessed.is_set():
        raise PlanError("nnUNet_preprocessed is not set; export it (see `nnunetv2_deconver env`)")
    try:
        name = maybe_convert_to_dataset_name(dataset)
    except (RuntimeError, ValueError):
        raise PlanError(f"dataset {dataset} not found under nnUNet_raw, nnUNet_preprocessed or nnUNet_results "
                        f"(nnUNet_preprocessed={nnUNet_preprocessed.get()}); check the id and the exports") from None
    folder = os.path.join(nnUNet_preprocessed.get(), name)
    source_file = os.path.join(folder, source_plans + ".json")
    plan_first = f"run nnUNetv2_plan_and_preprocess -d {dataset} -c {' '.join(configurations)} first"
    plans = _load_json(source_file, "the stock plans this command starts from", plan_first)
    dataset_json = _load_json(os.path.join(folder, "dataset.json"), "copied there by nnU-Net's planning", plan_first)
    unsupported = [c for c in configurations if c not in SUPPORTED]
    if unsupported:
        raise PlanError(f"configuration(s) {unsupported} not supported: Deconver plans are made for {SUPPORTED} "
                        f"(a cascade reuses 3d_lowres and 3d_fullres; train those two instead)")
    missing = [c for c in configurations if c not in plans.get("configurations", {})]
    if missing:
        raise PlanError(f"{source_file} has no configuration {missing} (it has "
                        f"{sorted(plans.get('configurations', {}))}); {plan_first}")
    manager = PlansManager(copy.deepcopy(plans))
    num_classes = manager.get_label_manager(dataset_json).num_segmentation_heads
    input_channels = len(dataset_json.get("channel_names", dataset_json.get("modality", {})))
    out = copy.deepcopy(plans)
    out["plans_name"] = plans_name
    out["configurations"] = {}
    for c in configurations:
        stock = manager.get_configuration(c).configuration  # resolves "inherits_from"
        if "n_stages" not in stock.get("architecture", {}).get("arch_kwargs", {}):
            raise PlanError(f"{source_file}: configuration '{c}' is not a U-Net plan; Deconver plans start from "
                            f"nnU-Net's U-Net plans (nnUNetPlans or nnUNetResEnc*Plans)")
        print(f"{name} {c}: sizing Deconver for {gpu_memory_gb:g} GB ...", file=sys.stderr, flush=True)
        # nnU-Net's 5% cap counts whole volumes: a 2d configuration's median is one slice, times the slices
        voxels_per_case = np.prod(stock["median_image_size_in_voxels"], dtype=np.float64)
        if len(stock["patch_size"]) == 2:
            voxels_per_case *= plans["original_median_shape_after_transp"][0]
        configuration = deconver_configuration(stock, input_channels, num_classes,
                                               voxels_per_case * dataset_json["numTraining"], gpu_memory_gb,
                                               base_channels, kernel)
        configuration.pop("inherits_from", None)
        out["configurations"][c] = configuration
        data = os.path.join(folder, configuration["data_identifier"])
        reuse = "reuses" if os.path.isdir(data) else "will read (not preprocessed yet: run nnUNetv2_preprocess)"
        print(f"  patch {configuration['patch_size']} (stock {stock['patch_size']}), batch "
              f"{configuration['batch_size']} (stock {stock['batch_size']}), widths "
              f"{configuration['architecture']['arch_kwargs']['features_per_stage']}; {reuse} {data} "
              f"(spacing unchanged)", file=sys.stderr)
    target = os.path.join(folder, plans_name + ".json")
    write_json_atomic(out, target)
    return target


DESCRIPTION = __doc__.split("\n\n")[0]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """nnU-Net's flag style (as ``nnUNetv2_plan_and_preprocess``): options with a value take one dash."""
    parser.add_argument("-d", required=True, nargs="+", help="dataset id(s) or name(s)")
    parser.add_argument("-c", nargs="+", default=["2d", "3d_fullres"], help="configurations (default: 2d 3d_fullres)")
    parser.add_argument("-gpu_memory_target", type=float, default=8.0,
                        help="GPU memory in GB to fit training into (default 8, nnU-Net's reference)")
    parser.add_argument("-kernel", "--kernel", dest="kernel", type=int, choices=(3, 5), default=3, help="NDC kernel size (paper: 3 or 5)")
    parser.add_argument("-base_channels", "--base_channels", dest="base_channels", type=int, default=32, help="C0 in min(C0 * 2^l, 512) (default 32)")
    parser.add_argument("-source_plans", default="nnUNetPlans", help="the stock plans to start from")
    parser.add_argument("-overwrite_plans_name", default="nnUNetDeconverPlans", help="name of the plans written")


def run(args: argparse.Namespace) -> int:
    try:
        for dataset in args.d:
            configurations = [c for c in args.c]
            path = plan_dataset(dataset, configurations, args.gpu_memory_target, args.base_channels, args.kernel,
                                args.source_plans, args.overwrite_plans_name)
            print(f"wrote {path}; train with: nnUNetv2_train {dataset} CONFIGURATION FOLD -tr nnUNetTrainerDeconver "
                  f"-p {args.overwrite_plans_name}")
    except PlanError as e:
        print(f"nnUNetv2_deconver_plan: error: {e}", file=sys.stderr)
        return 1
    return 0


def main(argv=None) -> int:
    """``nnUNetv2_deconver_plan``, the same as ``nnunetv2_deconver plan``."""
    parser = argparse.ArgumentParser(prog="nnUNetv2_deconver_plan", description=DESCRIPTION)
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
