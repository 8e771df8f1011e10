"""Bad input through the real commands, as separate processes: each fails with one clear line and a
non-zero exit, and leaves nothing half-written or overwritten. One tiny dataset serves every test."""
import json
import os
import shutil
import stat
import subprocess

import pytest
import torch

from helpers.datasets import make_dataset
from helpers.processes import BIN, nnunet_environment, run

DATASET, NAME = 211, "Dataset211_BadInput"
SMOKE = "nnUNetTrainerDeconver_smoke"


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    root = tmp_path_factory.mktemp("nnunet_bad_input")
    environment = nnunet_environment(root)
    make_dataset(environment["nnUNet_raw"], DATASET, "BadInput", n_cases=3, shape=(16, 16, 16))
    run(["nnUNetv2_plan_and_preprocess", "-d", DATASET, "-c", "3d_fullres", "-np", 1, "-npfp", 1], environment)
    environment["nnUNet_n_proc_DA"] = "0"  # training only: it crashes nnU-Net's planner
    return environment


def _fails(args, env):
    """Run a console program that must fail; return its stderr lines (stripped, non-empty)."""
    proc = subprocess.run([os.path.join(BIN, args[0])] + [str(a) for a in args[1:]], env=env, capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode != 0, f"{args} succeeded:\n{proc.stdout[-3000:]}"
    return [line for line in proc.stderr.strip().splitlines() if line.strip()]


def _plans_path(env, plans):
    return os.path.join(env["nnUNet_preprocessed"], NAME, plans + ".json")


@pytest.mark.parametrize("option, value", [("-gpu_memory_target", "nan"), ("-gpu_memory_target", "inf"),
                                           ("-gpu_memory_target", "0"), ("-gpu_memory_target", "-8"),
                                           ("-base_channels", "0"), ("-base_channels", "-32")])
def test_planner_numeric_options_fail_in_one_line(env, option, value):
    err = _fails(["nnUNetv2_deconver_plan", "-d", DATASET, "-c", "3d_fullres", option, value], env)
    assert err == [f"nnUNetv2_deconver_plan: error: {option} must be " + err[0].split(" must be ", 1)[1]]
    assert not os.path.exists(_plans_path(env, "nnUNetDeconverPlans"))


def test_planner_never_replaces_plans_it_did_not_write(env):
    stock = _plans_path(env, "nnUNetPlans")
    with open(stock, "rb") as f:
        before = f.read()
    for name in ("nnUNetPlans", "nnUNetResEncUNetMPlans"):
        err = _fails(["nnUNetv2_deconver_plan", "-d", DATASET, "-c", "3d_fullres", "-overwrite_plans_name", name,
                      "--force"], env)
        assert len(err) == 1 and "nnU-Net's own or the source plans" in err[0], err
    with open(stock, "rb") as f:
        assert f.read() == before
    foreign = _plans_path(env, "nnUNetMyPlans")
    with open(foreign, "w") as f:
        json.dump({"plans_name": "nnUNetMyPlans", "configurations": {}}, f)
    err = _fails(["nnUNetv2_deconver_plan", "-d", DATASET, "-c", "3d_fullres", "-overwrite_plans_name",
                  "nnUNetMyPlans"], env)
    assert len(err) == 1 and "not written by nnUNetv2_deconver_plan" in err[0] and "--force" in err[0], err
    with open(foreign) as f:
        assert json.load(f) == {"plans_name": "nnUNetMyPlans", "configurations": {}}
    # its own file it replaces (re-planning), and --force replaces the foreign one
    for extra in ([], [], ["-overwrite_plans_name", "nnUNetMyPlans", "--force"]):
        run(["nnUNetv2_deconver_plan", "-d", DATASET, "-c", "3d_fullres", "-base_channels", 8, *extra], env)
    for written in (_plans_path(env, "nnUNetDeconverPlans"), foreign):
        assert stat.S_IMODE(os.stat(written).st_mode) == 0o644  # nnU-Net's (umask 022) permissions
        with open(written) as f:
            assert json.load(f)["deconver_planner"]["source_plans"] == "nnUNetPlans"
    assert not [f for f in os.listdir(os.path.dirname(stock)) if f.startswith(".tmp_")]


def test_bad_plan_value_stops_training_before_any_folder(env):
    with open(_plans_path(env, "nnUNetPlans")) as f:
        plans = json.load(f)
    plans["plans_name"] = "nnUNetZeroEpsPlans"
    arch = plans["configurations"]["3d_fullres"]["architecture"]
    arch["network_class_name"] = "nnunetv2_deconver.network.Deconver"
    arch["arch_kwargs"] = {k: arch["arch_kwargs"][k] for k in ("n_stages", "features_per_stage", "conv_op",
                                                                "kernel_sizes", "strides")}
    arch["arch_kwargs"]["ndc_eps"] = 0
    bad = _plans_path(env, "nnUNetZeroEpsPlans")
    with open(bad, "w") as f:
        json.dump(plans, f)
    err = _fails(["nnUNetv2_train", DATASET, "3d_fullres", 0, "-tr", SMOKE, "-p", "nnUNetZeroEpsPlans",
                  "-device", "cpu"], env)
    assert f"{bad}: configuration '3d_fullres': NDC eps must be a finite number > 0" in err[-1], err[-3:]
    assert not os.path.exists(os.path.join(env["nnUNet_results"], NAME, f"{SMOKE}__nnUNetZeroEpsPlans__3d_fullres"))


def test_nan_loss_stops_training_without_checkpoints(env):
    trainer = "nnUNetTrainerDeconver_smoke_nan"
    # fold "all": three cases are too few for nnU-Net's 5-fold split
    err = _fails(["nnUNetv2_train", DATASET, "3d_fullres", "all", "-tr", trainer, "-device", "cpu"], env)
    assert err[-1].startswith("nnunetv2_deconver.nnunet.checks.TrainingDivergedError: epoch 0: the training loss "
                              "is nan, so training stopped"), err[-3:]
    fold = os.path.join(env["nnUNet_results"], NAME, f"{trainer}__nnUNetPlans__3d_fullres", "fold_all")
    assert not [f for f in os.listdir(fold) if f.endswith(".pth")]
    logs = [f for f in os.listdir(fold) if f.startswith("training_log")]
    with open(os.path.join(fold, logs[0])) as f:
        assert "the training loss is nan" in f.read()


@pytest.fixture(scope="module")
def model(env):
    """A Deconver model folder as nnUNetv2_train leaves it (random weights: only its shape matters here)."""
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager
    from nnunetv2_deconver.trainers.nnUNetTrainerDeconver import nnUNetTrainerDeconver
    with open(_plans_path(env, "nnUNetPlans")) as f:
        plans = json.load(f)
    folder = os.path.join(env["nnUNet_results"], NAME, f"{SMOKE}__nnUNetPlans__3d_fullres")
    os.makedirs(os.path.join(folder, "fold_0"))
    shutil.copy(os.path.join(env["nnUNet_preprocessed"], NAME, "dataset.json"), folder)
    with open(os.path.join(folder, "plans.json"), "w") as f:
        json.dump(plans, f)
    manager = PlansManager(plans)
    network = nnUNetTrainerDeconver.build_network_architecture(manager, manager.get_configuration("3d_fullres"),
                                                               1, 3, False)
    torch.save({"network_weights": network.state_dict(), "trainer_name": SMOKE,
                "init_args": {"configuration": "3d_fullres"}, "inference_allowed_mirroring_axes": None},
               os.path.join(folder, "fold_0", "checkpoint_final.pth"))
    return folder


def _predict(env, images, out):
    return _fails(["nnUNetv2_predict", "-i", images, "-o", out, "-d", DATASET, "-c", "3d_fullres", "-f", 0, "-tr",
                   SMOKE, "-device", "cpu", "-npp", 1, "-nps", 1], env)


def test_predict_with_the_wrong_channel_count_says_so_before_the_workers(env, model, tmp_path):
    images = tmp_path / "two_channels"
    images.mkdir()
    source = os.path.join(env["nnUNet_raw"], NAME, "imagesTs")
    case = sorted(os.listdir(source))[0]
    for channel in ("0000", "0001"):
        shutil.copy(os.path.join(source, case), images / case.replace("_0000", f"_{channel}"))
    err = _predict(env, images, tmp_path / "out")
    assert "takes 1 image channel(s)" in err[-1] and "has channel(s) [0, 1]" in err[-1], err[-3:]
    assert not any("Background workers died" in line for line in err)
    assert os.listdir(tmp_path / "out") == []  # nnU-Net creates -o before loading the model


def test_predict_with_a_truncated_checkpoint_fails(env, model, tmp_path):
    # nnU-Net's torch.load fails before it knows the trainer, so no Deconver check can run (docs/checks.md)
    checkpoint = os.path.join(model, "fold_0", "checkpoint_final.pth")
    with open(checkpoint, "rb") as f:
        data = f.read()
    with open(checkpoint, "wb") as f:
        f.write(data[: len(data) // 2])
    err = _predict(env, os.path.join(env["nnUNet_raw"], NAME, "imagesTs"), tmp_path / "out")
    print("\n".join(err[-3:]))
