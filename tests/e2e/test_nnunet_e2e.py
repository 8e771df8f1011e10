"""End to end through nnU-Net's own command-line programs, as a user runs them, on tiny generated data.

Each dataset is planned and preprocessed once per session; each test then runs real processes
(``nnUNetv2_train``, ``nnUNetv2_predict``, ``nnUNetv2_deconver_plan``) on CPU with the smoke trainer.

The smoke schedule (2 training iterations) is far too short to learn, so these tests check the pipeline
(files, shapes, grids, labels, resumption), not segmentation quality: an all-background prediction would
pass them. That training learns, and that the saved checkpoint predicts what was trained, is
``test_learning.py``.
"""
import json
import os
import subprocess

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from helpers.datasets import make_dataset
from helpers.processes import BIN, nnunet_environment, run as _run
SMOKE = "nnUNetTrainerDeconver_smoke"
ISO, ANISO_IGNORE, REGIONS = 201, 202, 203
NAMES = {ISO: "Dataset201_Iso", ANISO_IGNORE: "Dataset202_AnisoIgnore", REGIONS: "Dataset203_Regions"}


@pytest.fixture(scope="session")
def nnunet_env(tmp_path_factory):
    """nnU-Net folders with three planned and preprocessed datasets; the environment for training."""
    root = tmp_path_factory.mktemp("nnunet")
    env = nnunet_environment(root)
    make_dataset(env["nnUNet_raw"], ISO, "Iso", n_cases=5, shape=(16, 16, 16))
    # spacing 3 x 1 x 1: nnU-Net's planner does not pool z in the first stage, strides (1, 2, 2)
    make_dataset(env["nnUNet_raw"], ANISO_IGNORE, "AnisoIgnore", n_cases=5, shape=(8, 24, 24),
                 spacing=(3.0, 1.0, 1.0), kind="ignore")
    make_dataset(env["nnUNet_raw"], REGIONS, "Regions", n_cases=5, shape=(16, 16, 16), kind="regions")
    _run(["nnUNetv2_plan_and_preprocess", "-d", ISO, ANISO_IGNORE, REGIONS, "-c", "3d_fullres", "-np", 1,
          "-npfp", 1], env)
    _run(["nnUNetv2_preprocess", "-d", ISO, "-c", "2d", "-np", 1], env)
    # nnUNet_n_proc_DA=0 crashes the planner (set_num_threads(0)), so it is only set from here on
    env["nnUNet_n_proc_DA"] = "0"
    return env


def _plans(env, dataset, plans="nnUNetPlans"):
    with open(os.path.join(env["nnUNet_preprocessed"], NAMES[dataset], plans + ".json")) as f:
        return json.load(f)


def _fold_dir(env, dataset, configuration, fold, trainer=SMOKE, plans="nnUNetPlans"):
    return os.path.join(env["nnUNet_results"], NAMES[dataset], f"{trainer}__{plans}__{configuration}", f"fold_{fold}")


def _train(env, dataset, configuration, fold=0, *extra):
    return _run(["nnUNetv2_train", dataset, configuration, fold, "-tr", SMOKE, "-device", "cpu", *extra], env)


def _check_trained(env, dataset, configuration, fold=0, plans="nnUNetPlans"):
    """A finished fold: final checkpoint from our trainer with one head per decoder stage, and a validation."""
    folder = _fold_dir(env, dataset, configuration, fold, plans=plans)
    checkpoint = torch.load(os.path.join(folder, "checkpoint_final.pth"), map_location="cpu", weights_only=False)
    assert checkpoint["trainer_name"] == SMOKE
    strides = _plans(env, dataset, plans)["configurations"][configuration]["architecture"]["arch_kwargs"]["strides"]
    heads = {k.split(".")[2] for k in checkpoint["network_weights"] if k.startswith("decoder.seg_layers.")}
    assert heads == {str(i) for i in range(len(strides) - 1)}
    assert os.path.isfile(os.path.join(folder, "validation", "summary.json"))
    return folder


def _predict(env, dataset, configuration, out_dir, plans="nnUNetPlans"):
    """Predict the held-out image; return (input image, prediction) as SimpleITK images."""
    images = os.path.join(env["nnUNet_raw"], NAMES[dataset], "imagesTs")
    _run(["nnUNetv2_predict", "-i", images, "-o", out_dir, "-d", dataset, "-c", configuration, "-f", 0,
          "-tr", SMOKE, "-p", plans, "-device", "cpu", "-npp", 1, "-nps", 1], env)
    case = sorted(os.listdir(images))[0]
    image = sitk.ReadImage(os.path.join(images, case))
    prediction = sitk.ReadImage(os.path.join(out_dir, case.replace("_0000.nii.gz", ".nii.gz")))
    return image, prediction


def _check_dice_by_hand(folder, labels_or_regions, ignore_label=None):
    """nnU-Net's validation Dice per case and label (or region, a tuple of labels), recomputed here from the
    prediction and reference files: voxels of the ignore label in the reference count for neither side."""
    with open(os.path.join(folder, "validation", "summary.json")) as f:
        per_case = json.load(f)["metric_per_case"]
    assert per_case
    for entry in per_case:
        reference = sitk.GetArrayFromImage(sitk.ReadImage(entry["reference_file"]))
        prediction = sitk.GetArrayFromImage(sitk.ReadImage(entry["prediction_file"]))
        valid = np.ones_like(reference, dtype=bool) if ignore_label is None else reference != ignore_label
        assert set(entry["metrics"]) == {str(k) for k in labels_or_regions}
        for key in labels_or_regions:
            members = key if isinstance(key, tuple) else (key,)
            ref, pred = np.isin(reference, members) & valid, np.isin(prediction, members) & valid
            tp, fp, fn = (ref & pred).sum(), (~ref & pred).sum(), (ref & ~pred).sum()
            metrics = entry["metrics"][str(key)]
            assert (metrics["TP"], metrics["FP"], metrics["FN"]) == (tp, fp, fn), (key, metrics)
            if tp + fp + fn:
                assert metrics["Dice"] == pytest.approx(2 * tp / (2 * tp + fp + fn), rel=1e-9)


def _assert_same_grid(image, prediction):
    assert prediction.GetSize() == image.GetSize()
    np.testing.assert_allclose(prediction.GetSpacing(), image.GetSpacing(), rtol=1e-6)
    np.testing.assert_allclose(prediction.GetOrigin(), image.GetOrigin(), atol=1e-6)
    np.testing.assert_allclose(prediction.GetDirection(), image.GetDirection(), atol=1e-6)


@pytest.fixture(scope="session")
def iso_3d_trained(nnunet_env):
    _train(nnunet_env, ISO, "3d_fullres")
    return _check_trained(nnunet_env, ISO, "3d_fullres")


def test_3d_fullres_train_and_predict_on_input_grid(nnunet_env, iso_3d_trained, tmp_path):
    image, prediction = _predict(nnunet_env, ISO, "3d_fullres", str(tmp_path / "pred"))
    _assert_same_grid(image, prediction)
    assert set(np.unique(sitk.GetArrayFromImage(prediction))) <= {0, 1, 2}


def test_2d_train(nnunet_env):
    # the final validation inside nnUNetv2_train already runs nnU-Net's predictor on the 2d network
    _train(nnunet_env, ISO, "2d")
    _check_trained(nnunet_env, ISO, "2d")


def test_resume_with_c_and_validation_only(nnunet_env, iso_3d_trained):
    summary = os.path.join(iso_3d_trained, "validation", "summary.json")
    os.remove(summary)
    out = _train(nnunet_env, ISO, "3d_fullres", 0, "--val")
    assert os.path.isfile(summary), out[-3000:]
    # an interrupted run: the only checkpoint is checkpoint_latest at the start of epoch 0, after 2 AdamW steps
    final = os.path.join(iso_3d_trained, "checkpoint_final.pth")
    checkpoint = torch.load(final, map_location="cpu", weights_only=False)
    checkpoint["current_epoch"] = 0
    torch.save(checkpoint, os.path.join(iso_3d_trained, "checkpoint_latest.pth"))
    os.remove(final)
    os.remove(summary)
    _train(nnunet_env, ISO, "3d_fullres", 0, "--c")
    resumed = torch.load(final, map_location="cpu", weights_only=False)
    # AdamW's step count went on from the checkpoint's: 2 iterations before and 2 after the resume
    steps = {float(s["step"]) for s in resumed["optimizer_state"]["state"].values()}
    assert steps == {4.0}, steps
    assert resumed["current_epoch"] == 1 and os.path.isfile(summary)


@pytest.mark.parametrize("trainer", ["nnUNetTrainerDeconverNoDeepSupervision_smoke",
                                     "nnUNetTrainerDeconverCheckpointed_smoke"])
def test_architecture_variants_train_through_nnunet(nnunet_env, iso_3d_trained, trainer):
    _run(["nnUNetv2_train", ISO, "3d_fullres", 0, "-tr", trainer, "-device", "cpu"], nnunet_env)
    folder = _fold_dir(nnunet_env, ISO, "3d_fullres", 0, trainer=trainer)
    assert os.path.isfile(os.path.join(folder, "validation", "summary.json"))
    weights = torch.load(os.path.join(folder, "checkpoint_final.pth"), map_location="cpu",
                         weights_only=False)["network_weights"]
    plain = torch.load(os.path.join(iso_3d_trained, "checkpoint_final.pth"), map_location="cpu",
                       weights_only=False)["network_weights"]
    heads = {k.split(".")[2] for k in weights if k.startswith("decoder.seg_layers.")}
    n_heads = len(_plans(nnunet_env, ISO)["configurations"]["3d_fullres"]["architecture"]["arch_kwargs"]["strides"]) - 1
    if "NoDeepSupervision" in trainer:
        # only the full-resolution head exists (the others are Identity): a deep-supervised loss would have
        # received feature maps instead of logits and failed
        assert heads == {str(n_heads - 1)}
        assert {k for k in weights if ".seg_layers." not in k} == {k for k in plain if ".seg_layers." not in k}
    else:
        # checkpointing changes no parameter: the plain network's keys and shapes
        assert {k: v.shape for k, v in weights.items()} == {k: v.shape for k, v in plain.items()}


def test_fine_tuning_from_pretrained_weights(nnunet_env, iso_3d_trained):
    weights = os.path.join(iso_3d_trained, "checkpoint_final.pth")
    out = _train(nnunet_env, ISO, "3d_fullres", 1, "-pretrained_weights", weights)
    assert "Loading pretrained weights from file" in out, out[-3000:]
    _check_trained(nnunet_env, ISO, "3d_fullres", fold=1)


def test_anisotropic_with_ignore_label(nnunet_env, tmp_path):
    strides = _plans(nnunet_env, ANISO_IGNORE)["configurations"]["3d_fullres"]["architecture"]["arch_kwargs"][
        "strides"]
    assert strides[1] == [1, 2, 2], f"the dataset should give an anisotropic first stride, got {strides}"
    _train(nnunet_env, ANISO_IGNORE, "3d_fullres")
    _check_dice_by_hand(_check_trained(nnunet_env, ANISO_IGNORE, "3d_fullres"), [1], ignore_label=2)
    image, prediction = _predict(nnunet_env, ANISO_IGNORE, "3d_fullres", str(tmp_path / "pred"))
    _assert_same_grid(image, prediction)
    # the ignore label (2) is never predicted: the network has outputs for background and ball only
    assert set(np.unique(sitk.GetArrayFromImage(prediction))) <= {0, 1}


def test_region_based_training(nnunet_env, tmp_path):
    _train(nnunet_env, REGIONS, "3d_fullres")
    folder = _check_trained(nnunet_env, REGIONS, "3d_fullres")
    with open(os.path.join(folder, "validation", "summary.json")) as f:
        per_region = json.load(f)["mean"]
    # nnU-Net evaluates region-based training per region: (1, 2) = whole, (2,) = core
    assert len(per_region) == 2, per_region
    _check_dice_by_hand(folder, [(1, 2), (2,)])
    for case in [f for f in os.listdir(os.path.join(folder, "validation")) if f.endswith(".nii.gz")]:
        seg = sitk.GetArrayFromImage(sitk.ReadImage(os.path.join(folder, "validation", case)))
        assert set(np.unique(seg)) <= {0, 1, 2}
    # and nnUNetv2_predict turns the region outputs into labels by regions_class_order
    image, prediction = _predict(nnunet_env, REGIONS, "3d_fullres", str(tmp_path / "pred"))
    _assert_same_grid(image, prediction)
    assert set(np.unique(sitk.GetArrayFromImage(prediction))) <= {0, 1, 2}


def test_plans_override_then_train(nnunet_env):
    stock = _plans(nnunet_env, ISO)["configurations"]["3d_fullres"]
    _run(["nnUNetv2_deconver_plan", "-d", ISO, "-c", "3d_fullres", "-base_channels", 8], nnunet_env)
    deconver = _plans(nnunet_env, ISO, "nnUNetDeconverPlans")["configurations"]["3d_fullres"]
    n_stages = len(stock["architecture"]["arch_kwargs"]["strides"])
    assert deconver["architecture"]["network_class_name"] == "nnunetv2_deconver.network.Deconver"
    assert deconver["architecture"]["arch_kwargs"]["features_per_stage"] == [min(8 * 2 ** level, 512)
                                                                             for level in range(n_stages)]
    assert deconver["data_identifier"] == stock["data_identifier"]  # the preprocessed data is reused
    _train(nnunet_env, ISO, "3d_fullres", 0, "-p", "nnUNetDeconverPlans")
    folder = _check_trained(nnunet_env, ISO, "3d_fullres", plans="nnUNetDeconverPlans")
    weights = torch.load(os.path.join(folder, "checkpoint_final.pth"), map_location="cpu",
                         weights_only=False)["network_weights"]
    assert weights["encoder.stages.0.0.weight"].shape[0] == 8  # the stem writes C0 = 8 channels, not the stock 32


def test_bad_inputs_fail_with_one_clear_message(nnunet_env, monkeypatch, capsys):
    folder = os.path.join(nnunet_env["nnUNet_preprocessed"], NAMES[ISO])
    plans = _plans(nnunet_env, ISO)
    plans["plans_name"] = "nnUNetBadPatchPlans"
    plans["configurations"]["3d_fullres"]["patch_size"] = [15, 16, 16]  # strides need multiples of 4
    bad_file = os.path.join(folder, "nnUNetBadPatchPlans.json")
    with open(bad_file, "w") as f:
        json.dump(plans, f)
    proc = subprocess.run([os.path.join(BIN, "nnUNetv2_train"), str(ISO), "3d_fullres", "0", "-tr", SMOKE, "-p",
                           "nnUNetBadPatchPlans", "-device", "cpu"], env=nnunet_env, capture_output=True, text=True)
    assert proc.returncode != 0 and bad_file in proc.stderr and "patch_size" in proc.stderr
    assert not os.path.exists(_fold_dir(nnunet_env, ISO, "3d_fullres", 0, plans="nnUNetBadPatchPlans"))
    # the planning command's own errors, in this process (the same main() the console script runs)
    from nnunetv2_deconver.tools import plan as planning
    for name in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results"):  # nnU-Net reads them at each use
        monkeypatch.setenv(name, nnunet_env[name])
    with open(os.path.join(folder, "nnUNetBadJSON.json"), "w") as f:
        f.write('{"configurations": {')  # cut off half way
    for args, expected in [(["-d", "999"], "dataset 999 not found"),
                           (["-d", str(ISO), "-c", "3d_cascade_fullres"], "not supported"),
                           (["-d", str(ISO), "-source_plans", "nnUNetBadJSON"],
                            "nnUNetBadJSON.json is not valid JSON")]:
        capsys.readouterr()
        assert planning.main(args + ["-overwrite_plans_name", "nnUNetNeverWritten"]) == 1
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and expected in err[0], err
        assert not os.path.exists(os.path.join(folder, "nnUNetNeverWritten.json"))
