"""End to end through nnU-Net's own command-line tools: plan and preprocess a tiny anisotropic dataset,
train a DTC smoke trainer on the CPU, predict with ``nnUNetv2_predict``, and draw the displacement
picture from the trained model folder.

The smoke schedule (2 training iterations) is too short to learn: these tests check the pipeline, not
segmentation quality (an all-background prediction would pass); ``test_learning.py`` tests that training learns.
"""
import glob
import json
import os
import subprocess

import numpy as np
import pytest
import SimpleITK as sitk

from helpers.processes import BIN, nnunet_environment, run
DATASET_ID, NAME = 871, "DTCBall"
SHAPE, SPACING = (10, 32, 32), (3.0, 1.0, 1.0)  # (z, y, x): anisotropic, so the plan has a (1, 2, 2) stride


def _write(array, path):
    image = sitk.GetImageFromArray(array)
    image.SetSpacing(SPACING[::-1])  # SimpleITK orders spacing x, y, z
    sitk.WriteImage(image, path)


def _make_dataset(raw):
    rng = np.random.default_rng(0)
    folder = os.path.join(raw, f"Dataset{DATASET_ID}_{NAME}")
    for sub in ("imagesTr", "labelsTr", "imagesTs"):
        os.makedirs(os.path.join(folder, sub))
    grid = np.meshgrid(*[np.arange(n) * s for n, s in zip(SHAPE, SPACING)], indexing="ij")
    n_train = 6
    for i in range(n_train + 1):
        centre = np.array(SHAPE) * np.array(SPACING) * rng.uniform(0.35, 0.65, size=3)
        distance = np.sqrt(sum((g - c) ** 2 for g, c in zip(grid, centre)))
        seg = (distance < 8).astype(np.uint8) + (distance < 4).astype(np.uint8)
        image = (100 * seg + rng.normal(0, 20, size=SHAPE)).astype(np.float32)
        case = f"{NAME}_{i:03d}"
        if i == n_train:
            _write(image, os.path.join(folder, "imagesTs", f"{case}_0000.nii.gz"))
        else:
            _write(image, os.path.join(folder, "imagesTr", f"{case}_0000.nii.gz"))
            _write(seg, os.path.join(folder, "labelsTr", f"{case}.nii.gz"))
    with open(os.path.join(folder, "dataset.json"), "w") as f:
        json.dump({"channel_names": {"0": "MRI"}, "labels": {"background": 0, "ball": 1, "core": 2},
                   "numTraining": n_train, "file_ending": ".nii.gz"}, f)
    return folder


TRAINERS = ("nnUNetTrainerUNetDTC_smoke", "nnUNetTrainerDeconverDTC_smoke")


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """The dataset planned once, and each DTC smoke trainer trained on it through nnUNetv2_train."""
    root = tmp_path_factory.mktemp("nnunet_dtc")
    env = nnunet_environment(root)
    folder = _make_dataset(env["nnUNet_raw"])
    run(["nnUNetv2_plan_and_preprocess", "-d", str(DATASET_ID), "-c", "3d_fullres", "-np", "1"], env, timeout=240)
    models = {}
    for trainer in TRAINERS:
        # nnUNet_n_proc_DA=0 only for training: the planner crashes with it (torch.set_num_threads(0))
        run(["nnUNetv2_train", str(DATASET_ID), "3d_fullres", "0", "-tr", trainer, "-device", "cpu"],
            dict(env, nnUNet_n_proc_DA="0"), timeout=240)
        models[trainer] = os.path.join(env["nnUNet_results"], f"Dataset{DATASET_ID}_{NAME}",
                                       f"{trainer}__nnUNetPlans__3d_fullres")
    return dict(env=env, folder=folder, models=models, root=root)


@pytest.mark.parametrize("trainer", TRAINERS)
def test_dtc_trains_and_predicts_through_the_cli(trained, trainer):
    import torch

    checkpoint = torch.load(os.path.join(trained["models"][trainer], "fold_0", "checkpoint_final.pth"),
                            map_location="cpu", weights_only=False)
    keys = checkpoint["network_weights"].keys()
    assert any(k.startswith("decoder.transpconvs.0.coordinates.") for k in keys)
    assert any(k.startswith("decoder.transpconvs.0.base.") for k in keys)
    out = str(trained["root"] / f"predictions_{trainer}")
    run(["nnUNetv2_predict", "-i", os.path.join(trained["folder"], "imagesTs"), "-o", out,
          "-d", str(DATASET_ID), "-c", "3d_fullres", "-f", "0", "-tr", trainer, "-chk",
          "checkpoint_final.pth", "-device", "cpu", "--disable_tta", "-npp", "1", "-nps", "1"], trained["env"],
        timeout=240)
    predictions = glob.glob(os.path.join(out, "*.nii.gz"))
    assert len(predictions) == 1
    seg = sitk.GetArrayFromImage(sitk.ReadImage(predictions[0]))
    assert seg.shape == SHAPE and set(np.unique(seg)) <= {0, 1, 2}


def test_displacement_picture_from_the_trained_model(trained, tmp_path):
    image = glob.glob(os.path.join(trained["folder"], "imagesTs", "*_0000.nii.gz"))[0]
    png = str(tmp_path / "displacement.png")
    env = {k: v for k, v in trained["env"].items() if k != "nnUNet_extTrainer"}  # the command finds them itself
    output = run(["nnunetv2_deconver", "dtc-displacement", trained["models"][TRAINERS[1]],
                  image, "-o", png, "--fold", "0", "--checkpoint", "checkpoint_final.pth"], env, timeout=240)
    with open(png, "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    assert "wrote" in output


def test_displacement_command_rejects_a_folder_that_is_no_model(tmp_path):
    result = subprocess.run([os.path.join(BIN, "nnunetv2_deconver"), "dtc-displacement", str(tmp_path),
                             str(tmp_path / "missing.nii.gz"), "-o", str(tmp_path / "x.png")],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode != 0 and "Traceback" not in result.stderr and "fold_0" in result.stderr
