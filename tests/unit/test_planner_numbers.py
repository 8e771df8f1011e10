"""The planner's numbers: the memory model's constant against measured saved bytes, and the planning
arithmetic (patch fits, one step more would not; batch formula under nnU-Net's cap; which axis shrinks;
the 2d path of ``nnUNetv2_deconver_plan``) redone here from the formulas."""
import json
import math

import numpy as np
import torch
from torch import nn

from nnunetv2_deconver import Deconver
from nnunetv2_deconver.network.compiled_memory import compiled_step_memory
from nnunetv2_deconver.network.presets import PAPER_PRESETS, paper_network
from nnunetv2_deconver.tools import plan as plan_command
from nnunetv2_deconver.nnunet.memory_model import ACTIVATION_BYTES_PER_FEATURE_ELEMENT, WORKSPACE_BYTES
from nnunetv2_deconver.nnunet.planner import deconver_configuration

ANISOTROPIC = dict(n_stages=5, features_per_stage=[32, 64, 128, 256, 320], conv_op=nn.Conv3d,
                   kernel_sizes=[[1, 3, 3], [1, 3, 3], [3, 3, 3], [3, 3, 3], [3, 3, 3]],
                   strides=[[1, 1, 1], [1, 2, 2], [2, 2, 2], [2, 2, 2], [1, 2, 2]])
TWO_D = dict(n_stages=6, features_per_stage=[32, 64, 128, 256, 512, 512], conv_op=nn.Conv2d,
             kernel_sizes=[[3, 3]] * 6, strides=[[1, 1]] + [[2, 2]] * 5)

# The planner sizes GPU training, which runs compiled under fp16 autocast: measured on that path, traced
# (compiled_step_memory: the forward's saved bytes plus the backward's largest transient workspace, batch 1,
# deep supervision on) / compute_conv_feature_map_size: 1.35 (isles22), 0.82 (brats23), 2.92 (glas),
# 1.61 (fives), 0.96 (anisotropic), 2.80 (2d). The model's constant must undercount none (the planner would
# overfill the GPU) and bound the largest within 3%.
LOWER = 0.97


def _networks():
    for name, preset in PAPER_PRESETS.items():
        yield name, lambda name=name: paper_network(name, deep_supervision=True), preset.input_channels, \
            preset.patch_size
    yield "anisotropic", lambda: Deconver(input_channels=1, num_classes=3, deep_supervision=True, **ANISOTROPIC), 1, \
        (20, 192, 160)
    yield "2d", lambda: Deconver(input_channels=1, num_classes=3, deep_supervision=True, **TWO_D), 1, (320, 256)


def test_memory_constant_bounds_the_traced_activation_bytes():
    per_element = {}
    for name, build, channels, patch in _networks():
        memory = compiled_step_memory(build, (1, channels, *patch))
        with torch.device("meta"):
            per_element[name] = (memory.saved + memory.transient) / build().compute_conv_feature_map_size(patch)
    assert max(per_element.values()) <= ACTIVATION_BYTES_PER_FEATURE_ELEMENT, per_element
    assert max(per_element.values()) >= LOWER * ACTIVATION_BYTES_PER_FEATURE_ELEMENT, per_element


# ------------------------------------------------------------------ the planning arithmetic, redone

def _stock(patch, strides, median, kernel=3, widths=None):
    dim = len(patch)
    n = len(strides)
    return {"patch_size": list(patch), "median_image_size_in_voxels": list(median), "batch_size": 2,
            "data_identifier": "nnUNetPlans_x",
            "architecture": {"network_class_name": "PlainConvUNet",
                             "arch_kwargs": {"n_stages": n, "features_per_stage": widths or [32] * n,
                                             "conv_op": f"torch.nn.Conv{dim}d",
                                             "kernel_sizes": [[kernel] * dim] * n, "strides": strides}}}


def _bytes(configuration, patch, batch, channels=1, classes=3):
    """Training bytes written out: 6.6 bytes per feature-map element per sample, 16 bytes per parameter
    (weights, gradients, two AdamW moments in fp32), 1.5 GiB workspace."""
    kwargs = dict(configuration["architecture"]["arch_kwargs"])
    with torch.device("meta"):
        network = Deconver(input_channels=channels, num_classes=classes, deep_supervision=True, **kwargs)
    parameters = sum(p.numel() for p in network.parameters())
    return (ACTIVATION_BYTES_PER_FEATURE_ELEMENT * network.compute_conv_feature_map_size(patch) * batch
            + 16 * parameters + WORKSPACE_BYTES)


def _divisor(configuration):
    return np.prod(np.array(configuration["architecture"]["arch_kwargs"]["strides"]), axis=0)


def test_patch_fits_and_one_step_more_would_not():
    strides = [[1, 1, 1], [2, 2, 2], [2, 2, 2], [2, 2, 2], [2, 2, 2]]
    stock = _stock((128, 128, 128), strides, (256, 256, 256))
    target_gb = 6.0
    config = deconver_configuration(stock, 1, 3, 100 * 256 ** 3, gpu_memory_gb=target_gb)
    patch, divisor = np.array(config["patch_size"]), _divisor(config)
    assert (patch % divisor == 0).all() and (patch <= 128).all() and (patch < 128).any()
    assert _bytes(config, patch, 2) <= target_gb * 2 ** 30
    # the patch one step before: the smallest axis relative to its divisor grows back (the shrinking rule,
    # run backwards: the planner always takes the largest axis, so the last one shrunk is now the smallest)
    ratios = np.where(patch < 128, patch / divisor, np.inf)
    grown = patch.copy()
    grown[int(np.argmin(ratios))] += divisor[int(np.argmin(ratios))]
    assert _bytes(config, grown, 2) > target_gb * 2 ** 30, (patch, grown)


def test_the_largest_axis_relative_to_its_divisor_shrinks_first():
    strides = [[1, 1, 1], [1, 2, 2], [2, 2, 2], [2, 2, 2], [1, 2, 2]]  # divisor (4, 16, 16)
    stock = _stock((32, 160, 128), strides, (64, 320, 320), widths=[32, 64, 128, 256, 320])
    # patch/divisor = (8, 10, 8): y shrinks first; a target between the bytes of the stock patch and of the
    # patch one y-step smaller stops right there
    full = _bytes(_as_deconver(stock), (32, 160, 128), 2)
    one_y = _bytes(_as_deconver(stock), (32, 144, 128), 2)
    assert one_y < full
    config = deconver_configuration(stock, 1, 3, 1e12, gpu_memory_gb=(one_y + full) / 2 / 2 ** 30)
    assert config["patch_size"] == [32, 144, 128]


def _as_deconver(stock):
    """The Deconver configuration the planner derives (widths min(32 * 2^l, 512), the plan's kernels and
    strides), at the stock patch: a target this large never shrinks it."""
    return deconver_configuration(stock, 1, 3, 1e12, gpu_memory_gb=1e6)


def test_batch_is_the_most_that_fits_below_the_cap():
    stock = _stock((64, 64, 64), [[1, 1, 1], [2, 2, 2], [2, 2, 2], [2, 2, 2]], (128, 128, 128))
    target = 24 * 2 ** 30
    config = deconver_configuration(stock, 1, 3, 1e12, gpu_memory_gb=24)  # cap: 5% of 1e12 voxels, far above
    patch = config["patch_size"]
    assert patch == [64, 64, 64]
    per_sample = _bytes(config, patch, 1) - _bytes(config, patch, 0)
    expected = math.floor((target - _bytes(config, patch, 0)) / per_sample)
    assert expected > 2 and config["batch_size"] == expected
    assert _bytes(config, patch, expected) <= target < _bytes(config, patch, expected + 1)
    # with a small dataset nnU-Net's cap wins: round(5% of the dataset's voxels / patch voxels)
    capped = deconver_configuration(stock, 1, 3, 10 * 128 ** 3, gpu_memory_gb=24)
    assert capped["batch_size"] == max(2, round(0.05 * 10 * 128 ** 3 / 64 ** 3)) < expected


def test_2d_plan_through_the_command(tmp_path, monkeypatch, capsys):
    for name in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results"):  # nnU-Net reads them at each use
        monkeypatch.setenv(name, str(tmp_path / name))
    folder = tmp_path / "nnUNet_preprocessed" / "Dataset997_Flat"
    folder.mkdir(parents=True)
    stock2d = _stock((512, 448), [[1, 1]] + [[2, 2]] * 6, (600, 500), widths=[32, 64, 128, 256, 512, 512, 512])
    stock2d["architecture"]["network_class_name"] = "dynamic_network_architectures.architectures.unet.PlainConvUNet"
    stock2d["architecture"]["_kw_requires_import"] = ["conv_op"]
    plans = {"dataset_name": "Dataset997_Flat", "plans_name": "nnUNetPlans",
             "original_median_shape_after_transp": [40, 600, 500], "configurations": {"2d": stock2d}}
    dataset = {"channel_names": {"0": "CT"}, "labels": {"background": 0, "a": 1, "b": 2}, "numTraining": 3,
               "file_ending": ".nii.gz"}
    (folder / "nnUNetPlans.json").write_text(json.dumps(plans))
    (folder / "dataset.json").write_text(json.dumps(dataset))
    # a target large enough that nnU-Net's dataset cap, not memory, sets the batch
    assert plan_command.main(["-d", "Dataset997_Flat", "-c", "2d", "-gpu_memory_target", "40"]) == 0
    written = json.loads((folder / "nnUNetDeconverPlans.json").read_text())["configurations"]["2d"]
    arch = written["architecture"]
    assert arch["network_class_name"] == "nnunetv2_deconver.network.Deconver"
    assert arch["arch_kwargs"]["conv_op"] == "torch.nn.Conv2d"
    assert arch["arch_kwargs"]["features_per_stage"] == [min(32 * 2 ** level, 512) for level in range(7)]
    patch = written["patch_size"]
    divisor = _divisor(written)
    assert all(p % d == 0 for p, d in zip(patch, divisor))
    assert patch == [512, 448]  # 40 GB hold the stock patch
    # 2d cap: whole volumes (600 x 500 slices x 40 slices x 3 cases) * 5% / patch pixels = 7.8 -> 8
    cap = round(600 * 500 * 40 * 3 * 0.05 / np.prod(patch))
    fixed = _bytes(written, patch, 0)
    most = math.floor((40 * 2 ** 30 - fixed) / (_bytes(written, patch, 1) - fixed))
    assert 2 < cap < most
    assert written["batch_size"] == cap
