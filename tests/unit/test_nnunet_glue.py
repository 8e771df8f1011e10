"""The nnU-Net glue without running nnU-Net: schedule, plan reading, atomic writes, memory model, planning
arithmetic, and where the trainers are found (editable and regular installs)."""
import inspect
import json
import os
import subprocess
import sys

import pytest
import torch
from torch import nn

from nnunetv2_deconver.nnunet.trainer_discovery import export_lines, trainers_folder
from nnunetv2_deconver.network import Deconver
from nnunetv2_deconver.network.costs import saved_activation_bytes
from nnunetv2_deconver.nnunet.memory_model import WORKSPACE_BYTES
from nnunetv2_deconver.nnunet.planner import deconver_configuration
from nnunetv2_deconver.nnunet.plans import (PlanError, check_patch_divisible, deconver_kwargs_from_configuration,
                                     replace_kernel)
from nnunetv2_deconver.nnunet.files import write_json_atomic
from nnunetv2_deconver.nnunet.lr_scheduler import warmup_cosine_lr

from helpers.processes import REPO



def test_schedule_is_the_papers_warmup_then_cosine():
    lr = 1e-4  # 1000 epochs: 1% warm-up = 10 epochs from lr/10, then a half cosine to 0
    assert warmup_cosine_lr(0, lr, 1000) == pytest.approx(1e-5)
    assert warmup_cosine_lr(5, lr, 1000) == pytest.approx(lr * (0.1 + 0.9 * 5 / 10))
    assert warmup_cosine_lr(10, lr, 1000) == pytest.approx(lr)
    assert warmup_cosine_lr(505, lr, 1000) == pytest.approx(lr / 2)
    assert warmup_cosine_lr(1000, lr, 1000) == pytest.approx(0, abs=1e-15)
    assert warmup_cosine_lr(1, lr, 5) == pytest.approx(lr)  # short runs: warm-up is at least one epoch


def test_replace_kernel_keeps_in_plane_only_axes():
    assert replace_kernel([[1, 3, 3], [3, 3, 3]], 5) == [[1, 5, 5], [5, 5, 5]]
    assert replace_kernel([[3, 3]], None) == [[3, 3]]


def test_patch_not_divisible_names_file_and_fix():
    strides = [[1, 1, 1], [1, 2, 2], [2, 2, 2]]  # divisor (2, 4, 4)
    check_patch_divisible([6, 20, 20], strides, "3d_fullres", "/x/nnUNetPlans.json")
    with pytest.raises(PlanError, match=r"/x/nnUNetPlans.json.*\[2, 4, 4\].*\[8, 20, 24\]"):
        check_patch_divisible([7, 20, 22], strides, "3d_fullres", "/x/nnUNetPlans.json")


def test_stock_plan_topology_and_bad_deconver_plan():
    stock = {"network_class_name": "dynamic_network_architectures.architectures.unet.PlainConvUNet",
             "arch_kwargs": {"n_stages": 2, "features_per_stage": [32, 64], "conv_op": "torch.nn.modules.conv.Conv3d",
                             "kernel_sizes": [[3, 3, 3]] * 2, "strides": [[1, 1, 1], [2, 2, 2]],
                             "n_conv_per_stage": [2, 2], "nonlin": "torch.nn.LeakyReLU"}}
    kwargs = deconver_kwargs_from_configuration(stock, "3d_fullres", "p.json")
    assert kwargs == {k: stock["arch_kwargs"][k] for k in ("n_stages", "features_per_stage", "conv_op",
                                                            "kernel_sizes", "strides")}
    bad = {"network_class_name": "nnunetv2_deconver.network.Deconver",
           "arch_kwargs": dict(kwargs, n_conv_per_stage=[2, 2])}
    with pytest.raises(PlanError, match="p.json.*n_conv_per_stage.*nnUNetv2_deconver_plan"):
        deconver_kwargs_from_configuration(bad, "3d_fullres", "p.json")
    with pytest.raises(PlanError, match="p.json.*no U-Net topology"):
        deconver_kwargs_from_configuration({"network_class_name": "X", "arch_kwargs": {}}, "2d", "p.json")


def test_atomic_write_leaves_old_file_on_failure(tmp_path):
    path = str(tmp_path / "plans.json")
    write_json_atomic({"a": 1}, path)
    with pytest.raises(TypeError):
        write_json_atomic({"a": object()}, path)  # not serialisable: fails half way through the dump
    with open(path) as f:
        assert json.load(f) == {"a": 1}
    assert os.listdir(tmp_path) == ["plans.json"]


def test_saved_activation_bytes_counts_what_autograd_keeps():
    with torch.device("meta"):
        network = nn.Sequential(nn.Conv3d(1, 4, 3, padding=1), nn.ReLU())
    # conv saves its input (1 x 8^3 fp32), relu its output (4 x 8^3 fp32); the weight is a parameter
    assert saved_activation_bytes(network, 1, (8, 8, 8)) == 4 * (8 ** 3 + 4 * 8 ** 3)


def _stock(patch, median, strides, batch=2):
    dim = len(patch)
    return {"patch_size": patch, "median_image_size_in_voxels": median, "batch_size": batch,
            "data_identifier": "nnUNetPlans_x",
            "architecture": {"network_class_name": "PlainConvUNet",
                             "arch_kwargs": {"n_stages": len(strides), "features_per_stage": [32] * len(strides),
                                             "conv_op": f"torch.nn.Conv{dim}d",
                                             "kernel_sizes": [[3] * dim] * len(strides), "strides": strides}}}


def test_planning_caps_batch_like_nnunet_and_shrinks_patch_for_memory():
    # nnU-Net's cap: round(voxels of the dataset * 5% / patch voxels): 8 cases of 32^3, 2d patch 32^2 -> 12.8 -> 13
    stock2d = _stock([32, 32], [32, 32], [[1, 1], [2, 2], [2, 2]])
    config = deconver_configuration(stock2d, 1, 3, 8 * 32 ** 3, gpu_memory_gb=8)
    assert config["batch_size"] == 13 and config["patch_size"] == [32, 32]
    assert config["architecture"]["arch_kwargs"]["features_per_stage"] == [32, 64, 128]  # min(C0 * 2^l, 512)
    strides = [[1, 1, 1], [2, 2, 2], [2, 2, 2], [2, 2, 2]]
    big = _stock([128, 128, 128], [256, 256, 256], strides)
    small = deconver_configuration(big, 1, 3, 100 * 256 ** 3, gpu_memory_gb=4)
    assert all(p % 8 == 0 and p <= 128 for p in small["patch_size"]) and small["patch_size"] != [128] * 3
    with pytest.raises(PlanError, match="memory target"):
        deconver_configuration(big, 1, 3, 100 * 256 ** 3, gpu_memory_gb=WORKSPACE_BYTES / 2 ** 30 / 2)


def test_trainers_folder_holds_only_trainer_modules():
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
    import importlib
    folder = trainers_folder()
    assert folder == os.path.join(REPO, "trainers")  # this checkout is installed editable (.ci/run)
    modules = []
    for root, _, files in os.walk(folder):
        package = os.path.relpath(root, folder).replace(os.sep, ".").lstrip(".")
        modules += [f"{package}.{f[:-3]}".lstrip(".") for f in files if f.endswith(".py") and f != "__init__.py"]
    assert {"nnUNetTrainerDeconver", "variants.testing.nnUNetTrainer_smoke"} <= set(modules)
    # nnU-Net imports every module here, subfolders too: each must hold trainers only, and production
    # trainers must not import the test trainers
    testing = "nnunetv2_deconver.trainers.variants.testing"
    for name in modules:
        module = importlib.import_module(f"nnunetv2_deconver.trainers.{name}")
        classes = [v for v in vars(module).values() if isinstance(v, type) and v.__module__ == module.__name__]
        assert classes and all(issubclass(c, nnUNetTrainer) for c in classes), name
        if not name.startswith("variants.testing"):
            with open(module.__file__) as f:
                assert testing not in f.read(), f"{name} imports a test trainer"
        if not name.startswith("variants.testing") and "_smoke" not in name:
            assert name.split(".")[-1] in {c.__name__ for c in classes}, f"{name}: file not named after its class"


def test_export_lines_prepend_and_keep_other_folders():
    env = {"nnUNet_extTrainer": os.pathsep.join(["/other", "/t"]), "nnUNet_raw": "r", "nnUNet_preprocessed": "p",
           "nnUNet_results": "s"}
    assert export_lines(env, folder="/t") == [f"export nnUNet_extTrainer=/t{os.pathsep}/other"]
    assert export_lines({}, folder="/t")[0] == "export nnUNet_extTrainer=/t"


@pytest.mark.e2e
def test_env_points_at_site_packages_after_a_regular_install(tmp_path):
    target = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation",
                    "--target", str(target), REPO], check=True, capture_output=True)
    out = subprocess.run([sys.executable, "-c", "from nnunetv2_deconver.tools.cli import main; main(['env'])"],
                         cwd=tmp_path, env=dict(os.environ, PYTHONPATH=str(target)), check=True,
                         capture_output=True, text=True).stdout
    expected = os.path.join(str(target), "nnunetv2_deconver", "trainers")
    assert out.splitlines()[0] == f"export nnUNet_extTrainer={expected}"
    assert os.path.isfile(os.path.join(expected, "nnUNetTrainerDeconver.py"))


def _manager(kernel_sizes, strides, patch, class_name="dynamic_network_architectures.architectures.unet.PlainConvUNet",
             extra=None):
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager
    arch = {"n_stages": len(strides), "features_per_stage": [4 * 2 ** i for i in range(len(strides))],
            "conv_op": "torch.nn.modules.conv.Conv3d", "kernel_sizes": kernel_sizes, "strides": strides}
    arch.update(extra or {})
    plans = {"dataset_name": "Dataset998_X", "plans_name": "nnUNetPlans", "configurations": {"3d_fullres": {
        "data_identifier": "x", "patch_size": patch, "batch_size": 2,
        "architecture": {"network_class_name": class_name, "arch_kwargs": arch, "_kw_requires_import": ["conv_op"]}}}}
    manager = PlansManager(plans)
    return manager, manager.get_configuration("3d_fullres")


def test_trainers_build_from_the_plan_topology():
    from nnunetv2_deconver.trainers.nnUNetTrainerDeconver import nnUNetTrainerDeconver
    from nnunetv2_deconver.trainers.variants.network_architecture.nnUNetTrainerDeconver_k5 import \
        nnUNetTrainerDeconver_k5
    strides = [[1, 1, 1], [1, 2, 2], [2, 2, 2]]
    manager, configuration = _manager([[1, 3, 3], [3, 3, 3], [3, 3, 3]], strides, [4, 8, 8])
    network = nnUNetTrainerDeconver.build_network_architecture(manager, configuration, 2, 3, True)
    assert network.features_per_stage == [4, 8, 16] and network.kernel_sizes == [(1, 3, 3), (3, 3, 3), (3, 3, 3)]
    outputs = network(torch.zeros(1, 2, 4, 8, 8))
    # one output per decoder stage, at 1 / cumprod(strides) (nnU-Net's deep-supervision scales)
    assert [tuple(o.shape) for o in outputs] == [(1, 3, 4, 8, 8), (1, 3, 4, 4, 4)]
    k5 = nnUNetTrainerDeconver_k5.build_network_architecture(manager, configuration, 2, 3, False)
    assert k5.kernel_sizes == [(1, 5, 5), (5, 5, 5), (5, 5, 5)] and k5.stem_kernel_size == (1, 3, 3)
    assert tuple(k5(torch.zeros(1, 2, 4, 8, 8)).shape) == (1, 3, 4, 8, 8)
    from nnunetv2_deconver.trainers.variants.network_architecture.nnUNetTrainerDeconverCheckpointed import \
        nnUNetTrainerDeconverCheckpointed
    checkpointed = nnUNetTrainerDeconverCheckpointed.build_network_architecture(manager, configuration, 2, 3, True)
    assert checkpointed.checkpoint_blocks and not network.checkpoint_blocks
    assert checkpointed.kernel_sizes == network.kernel_sizes
    bad_manager, bad_configuration = _manager([[1, 3, 3], [3, 3, 3], [3, 3, 3]], strides, [4, 8, 6])
    with pytest.raises(PlanError, match=r"Dataset998_X.nnUNetPlans.json.*\[4, 8, 6\]"):
        nnUNetTrainerDeconver.build_network_architecture(bad_manager, bad_configuration, 2, 3, True)
    # a plan naming Deconver: its own arguments (here R = 2) are used as they are
    manager, configuration = _manager([[3, 3, 3]] * 2, [[1, 1, 1], [2, 2, 2]], [8, 8, 8],
                                      "nnunetv2_deconver.network.Deconver", {"ndc_ratio": 2})
    assert nnUNetTrainerDeconver.build_network_architecture(manager, configuration, 1, 2, True).ndc_ratio == 2


def test_trainer_overrides_are_merged_once_and_a_deconver_plans_own_value_warns():
    import warnings
    from nnunetv2_deconver.nnunet.network_options import PlanValueOverridden
    from nnunetv2_deconver.trainers.variants.network_architecture.nnUNetTrainerDeconverDTC import (
        nnUNetTrainerDeconverDTC, nnUNetTrainerDeconverDTC_rf4)
    deconver = ([[3, 3, 3]] * 2, [[1, 1, 1], [2, 2, 2]], [8, 8, 8], "nnunetv2_deconver.network.Deconver")
    manager, configuration = _manager(*deconver, {"upsample": "dtc", "dtc_receptive_field": 2.0})
    with pytest.warns(PlanValueOverridden, match=r"'3d_fullres' sets dtc_receptive_field=2.0; "
                                                 r"nnUNetTrainerDeconverDTC_rf4 uses dtc_receptive_field=4.0"):
        network = nnUNetTrainerDeconverDTC_rf4.build_network_architecture(manager, configuration, 1, 2, True)
    assert network.decoder.transpconvs[0].receptive_field == 4.0
    with warnings.catch_warnings():
        warnings.simplefilter("error", PlanValueOverridden)  # the same value, or a U-Net plan: nothing to say
        nnUNetTrainerDeconverDTC.build_network_architecture(manager, configuration, 1, 2, True)
        stock, stock_configuration = _manager(*deconver[:3])
        assert nnUNetTrainerDeconverDTC_rf4.network_kwargs(stock, stock_configuration)["upsample"] == "dtc"


def test_shipped_fragments_are_json_and_load():
    from nnunetv2_deconver.nnunet.plans import fragment_folder, load_fragment, shipped_fragments
    assert {"deconver_k3", "deconver_k5", "deconver_dtc"} <= set(shipped_fragments())
    for name in shipped_fragments():
        with open(os.path.join(fragment_folder(), name + ".json")) as f:
            raw = json.load(f)
        fragment, path = load_fragment(name)
        assert fragment == raw and path.endswith(name + ".json")
        # a fragment lists only the values that differ from Deconver's defaults (placeholders aside)
        defaults = inspect.signature(Deconver).parameters
        same = [k for k, v in fragment["architecture"]["arch_kwargs"].items()
                if not str(v).startswith("$") and defaults[k].default == v]
        assert same == [], f"{name} repeats Deconver's defaults {same}"
    assert os.path.isfile(os.path.join(fragment_folder(), "README.md"))


@pytest.mark.parametrize("change, message", [
    (lambda f: f.update(spacing=[1, 1, 1]), r"unknown key\(s\) \['spacing'\]"),
    (lambda f: f["architecture"]["arch_kwargs"].update(n_conv_per_stage=[2]), "arch_kwargs.n_conv_per_stage"),
    (lambda f: f["architecture"]["arch_kwargs"].update(strides="$stride"), r"unknown placeholder\(s\) \['\$stride'\]"),
    (lambda f: f["architecture"]["arch_kwargs"].update(kernel_sizes="$kernel_sizes:4"), "unknown placeholder"),
    (lambda f: f.update(patch_size=[64, 64, 64]), r"\['patch_size'\] must be"),
    (lambda f: f["architecture"].update(network_class_name="PlainConvUNet"), "must name Deconver"),
])
def test_a_bad_fragment_is_refused_in_one_line(tmp_path, change, message):
    from nnunetv2_deconver.nnunet.plans import load_fragment
    fragment = load_fragment("deconver_k3")[0]
    change(fragment)
    path = tmp_path / "mine.json"
    path.write_text(json.dumps(fragment))
    with pytest.raises(PlanError, match=message) as error:
        load_fragment(str(path))
    assert str(path) in str(error.value) and "\n" not in str(error.value)
    with pytest.raises(PlanError, match="not found.*deconver_k3"):
        load_fragment("deconver_k7")


def test_planner_output_is_the_stock_configuration_merged_with_the_filled_fragment():
    from nnunetv2_deconver.nnunet.plans import load_fragment
    strides = [[1, 1, 1], [1, 2, 2], [2, 2, 2]]
    stock = _stock([16, 32, 32], [20, 40, 40], strides)
    stock["architecture"]["arch_kwargs"]["kernel_sizes"] = [[1, 3, 3], [3, 3, 3], [3, 3, 3]]
    stock.update(spacing=[3.0, 1.0, 1.0], normalization_schemes=["ZScoreNormalization"])
    config = deconver_configuration(stock, 1, 3, 10 * 20 * 40 * 40, 8, base_channels=16,
                                    fragment=load_fragment("deconver_k5")[0], configuration_name="3d_fullres")
    # written from deconver_k5.json and the stock configuration above: placeholders filled, the rest verbatim
    expected_kwargs = {"n_stages": 3, "features_per_stage": [16, 32, 64], "conv_op": "torch.nn.Conv3d",
                       "kernel_sizes": [[1, 5, 5], [5, 5, 5], [5, 5, 5]], "strides": strides,
                       "stem_kernel_size": [1, 3, 3]}
    assert config["architecture"] == {"network_class_name": "nnunetv2_deconver.network.Deconver",
                                      "arch_kwargs": expected_kwargs, "_kw_requires_import": ["conv_op"]}
    assert "inherits_from" not in config
    for key in ("spacing", "normalization_schemes", "data_identifier", "median_image_size_in_voxels"):
        assert config[key] == stock[key]
    # this small network fits 8 GB at the stock patch; the batch is nnU-Net's 5% cap: 0.05 * 16000 * 10 / 16384
    assert config["patch_size"] == [16, 32, 32] and config["batch_size"] == max(round(8000 / 16384), 2)
    dtc = deconver_configuration(stock, 1, 3, 1e6, 8, fragment=load_fragment("deconver_dtc")[0])
    assert dtc["architecture"]["arch_kwargs"]["upsample"] == "dtc"
    assert "dtc_receptive_field" not in dtc["architecture"]["arch_kwargs"]  # Deconver's default, 2


def _hand_merged_plans(arch_kwargs_change=None):
    """Stock 3d_fullres plus a configuration merged by hand as plans_overrides/README.md shows."""
    from nnunetv2_deconver.nnunet.plans import load_fragment
    stock = _stock([16, 16, 16], [16, 16, 16], [[1, 1, 1], [2, 2, 2], [2, 2, 2]])
    fragment = load_fragment("deconver_k5")[0]
    fragment["inherits_from"] = "3d_fullres"
    del fragment["patch_size"], fragment["batch_size"]  # inherited from 3d_fullres
    fragment["architecture"]["arch_kwargs"].update(
        n_stages=3, features_per_stage=[8, 16, 32], conv_op="torch.nn.modules.conv.Conv3d",
        kernel_sizes=[[5, 5, 5]] * 3, strides=[[1, 1, 1], [2, 2, 2], [2, 2, 2]], stem_kernel_size=[3, 3, 3])
    fragment["architecture"]["arch_kwargs"].update(arch_kwargs_change or {})
    return {"dataset_name": "Dataset998_X", "plans_name": "nnUNetPlans", "deconver_planner": {"version": "x"},
            "configurations": {"3d_fullres": stock, "3d_fullres_deconver": fragment}}


def test_hand_merged_configuration_builds_through_nnunet_and_the_trainer():
    from nnunetv2.utilities.get_network_from_plans import get_network_from_plans
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager
    from nnunetv2_deconver.network import Deconver
    from nnunetv2_deconver.nnunet.plans import configuration_name_of
    from nnunetv2_deconver.trainers.nnUNetTrainerDeconver import nnUNetTrainerDeconver
    manager = PlansManager(_hand_merged_plans())  # the unknown top-level marker key is ignored
    configuration = manager.get_configuration("3d_fullres_deconver")
    assert configuration.data_identifier == "nnUNetPlans_x" and configuration.patch_size == [16, 16, 16]
    assert configuration_name_of(manager, configuration) == "3d_fullres_deconver"
    network = nnUNetTrainerDeconver.build_network_architecture(manager, configuration, 1, 3, True)
    assert isinstance(network, Deconver) and network.features_per_stage == [8, 16, 32]
    assert network.kernel_sizes == [(5, 5, 5)] * 3 and network.stem_kernel_size == (3, 3, 3)
    # stock nnUNetTrainer builds it the same way (nnU-Net's own get_network_from_plans)
    stock_built = get_network_from_plans(configuration.network_arch_class_name,
                                         configuration.network_arch_init_kwargs,
                                         configuration.network_arch_init_kwargs_req_import, 1, 3, deep_supervision=True)
    assert type(stock_built) is Deconver and stock_built.kernel_sizes == network.kernel_sizes


@pytest.mark.parametrize("change, message", [({"ndc_eps": 0}, "eps must be a finite number > 0"),
                                             ({"ndc_iterations": 0}, "iterations"),
                                             ({"upsample": "nearest"}, "upsample"),
                                             ({"strides": "$strides"}, r"unfilled placeholders.*strides")])
def test_a_bad_plan_value_names_file_and_configuration(change, message):
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager
    from nnunetv2_deconver.trainers.nnUNetTrainerDeconver import nnUNetTrainerDeconver
    manager = PlansManager(_hand_merged_plans(change))
    configuration = manager.get_configuration("3d_fullres_deconver")
    where = r"Dataset998_X.nnUNetPlans.json: configuration '3d_fullres_deconver'"
    with pytest.raises(PlanError, match=rf"{where}.*{message}"):
        nnUNetTrainerDeconver.network_kwargs(manager, configuration)
