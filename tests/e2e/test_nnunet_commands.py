"""nnU-Net's commands after training, with Deconver trainers, as a user runs them: choosing the best
configuration and ensembling, postprocessing, sharing a model as a zip, predicting from a model folder,
``-f all``, ``-chk checkpoint_best.pth``, ``--save_probabilities``, the cascade with Deconver plans, and a
regular (non-editable) install.

One tiny dataset (5 cases of 48^3) is planned once with a small GPU memory target, so that nnU-Net's own
planner makes a ``3d_lowres`` and a ``3d_cascade_fullres`` as it does for large images; every model is
trained once per module (smoke schedule, CPU) and shared by the tests. As in ``test_nnunet_e2e.py`` the
schedule is too short to learn: the tests check files, grids, labels and that nnU-Net's commands accept the
Deconver models, not segmentation quality.
"""
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import SimpleITK as sitk

from helpers.datasets import make_dataset
from helpers.processes import REPO, nnunet_environment, run

DATASET, NAME = 205, "Dataset205_Commands"
DECONVER, STOCK = "nnUNetTrainerDeconver_smoke", "nnUNetTrainer_smoke"
# sliding windows that do not overlap (-step_size 1): a quarter of the default's windows, the same code path
CPU = ["-device", "cpu", "-npp", 1, "-nps", 1, "-step_size", 1]


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    root = tmp_path_factory.mktemp("commands")
    env = nnunet_environment(root)
    make_dataset(env["nnUNet_raw"], DATASET, "Commands", n_cases=5, shape=(48, 48, 48), n_test=2)
    # a 0.02 GB target caps the 3d_fullres patch far below the image: nnU-Net then plans the cascade
    run(["nnUNetv2_plan_and_preprocess", "-d", DATASET, "-c", "3d_fullres", "3d_lowres", "-np", 1, "-npfp", 1,
         "-gpu_memory_target", 0.02], env)
    plans = _plans(env)
    assert {"3d_lowres", "3d_cascade_fullres"} <= set(plans["configurations"]), sorted(plans["configurations"])
    env["nnUNet_n_proc_DA"] = "0"  # only after planning (it crashes the planner)
    return env


def _plans(env, name="nnUNetPlans"):
    with open(os.path.join(env["nnUNet_preprocessed"], NAME, name + ".json")) as f:
        return json.load(f)


def _model(env, trainer, configuration, plans="nnUNetPlans", results=None):
    return os.path.join(results or env["nnUNet_results"], NAME, f"{trainer}__{plans}__{configuration}")


def _train(env, configuration, fold, trainer=DECONVER, *extra, plans="nnUNetPlans"):
    run(["nnUNetv2_train", DATASET, configuration, fold, "-tr", trainer, "-p", plans, "-device", "cpu", *extra], env)
    folder = os.path.join(_model(env, trainer, configuration, plans), f"fold_{fold}")
    assert os.path.isfile(os.path.join(folder, "validation", "summary.json")), folder
    return folder


def _images(env):
    return os.path.join(env["nnUNet_raw"], NAME, "imagesTs")


def _cases(env):
    return sorted(f[:-len("_0000.nii.gz")] for f in os.listdir(_images(env)))


def _predict(env, out, configuration="3d_fullres", trainer=DECONVER, fold=0, *extra, run_env=None):
    """nnUNetv2_predict of the held-out images of ``env``, run in ``run_env`` (default: ``env``)."""
    run(["nnUNetv2_predict", "-i", _images(env), "-o", out, "-d", DATASET, "-c", configuration, "-tr", trainer,
         "-f", fold, *CPU, *extra], run_env or env)
    return _read_predictions(env, out)


def _read_predictions(env, out):
    """Every held-out case's prediction, checked to lie on its image's grid; as arrays."""
    arrays = {}
    for case in _cases(env):
        image = sitk.ReadImage(os.path.join(_images(env), f"{case}_0000.nii.gz"))
        prediction = sitk.ReadImage(os.path.join(out, f"{case}.nii.gz"))
        assert prediction.GetSize() == image.GetSize()
        np.testing.assert_allclose(prediction.GetSpacing(), image.GetSpacing(), rtol=1e-6)
        np.testing.assert_allclose(prediction.GetOrigin(), image.GetOrigin(), atol=1e-6)
        arrays[case] = sitk.GetArrayFromImage(prediction)
        assert set(np.unique(arrays[case])) <= {0, 1, 2}
    return arrays


@pytest.fixture(scope="module")
def cross_validated(env):
    """Fold 0 of Deconver and of stock nnU-Net, with the validation probabilities (--npz) ensembling needs."""
    return {trainer: _train(env, "3d_fullres", 0, trainer, "--npz") for trainer in (DECONVER, STOCK)}


@pytest.fixture(scope="module")
def fold_all(env):
    return _train(env, "3d_fullres", "all")


def test_find_best_configuration_ensemble_and_postprocessing(env, cross_validated, tmp_path):
    run(["nnUNetv2_find_best_configuration", DATASET, "-c", "3d_fullres", "-tr", DECONVER, STOCK, "-f", 0,
         "-np", 1], env)
    with open(os.path.join(env["nnUNet_results"], NAME, "inference_information.json")) as f:
        information = json.load(f)
    models = {f"{t}__nnUNetPlans__3d_fullres" for t in (DECONVER, STOCK)}
    assert models | {f"ensemble___{DECONVER}__nnUNetPlans__3d_fullres___{STOCK}__nnUNetPlans__3d_fullres___0"} == \
        set(information["all_results"]), information["all_results"]  # each trainer and their ensemble scored
    # what its printed instructions tell the user to run for an ensemble: predict with probabilities, ensemble,
    # postprocess (Deconver's from checkpoint_best.pth, also a model nnU-Net saves)
    outputs = []
    for trainer, extra in ((DECONVER, ["-chk", "checkpoint_best.pth"]), (STOCK, [])):
        out = str(tmp_path / trainer)
        predicted = _predict(env, out, "3d_fullres", trainer, 0, "--save_probabilities", *extra)
        for case, labels in predicted.items():  # the probabilities nnUNetv2_ensemble averages
            probabilities = np.load(os.path.join(out, f"{case}.npz"))["probabilities"]
            assert probabilities.shape == (3, *labels.shape)  # one map per class, on the image grid
            np.testing.assert_allclose(probabilities.sum(0), 1, atol=1e-4)
            np.testing.assert_array_equal(probabilities.argmax(0), labels)
            assert os.path.isfile(os.path.join(out, f"{case}.pkl"))
        outputs.append(out)
    run(["nnUNetv2_ensemble", "-i", *outputs, "-o", tmp_path / "ensemble", "-np", 1], env)
    _read_predictions(env, str(tmp_path / "ensemble"))
    # the postprocessing find_best_configuration chose, as its printed instructions apply it
    best = information["best_model_or_ensemble"]
    run(["nnUNetv2_apply_postprocessing", "-i", tmp_path / "ensemble", "-o", tmp_path / "postprocessed",
         "-pp_pkl_file", best["postprocessing_file"], "-np", 1, "-plans_json", best["some_plans_file"]], env)
    _read_predictions(env, str(tmp_path / "postprocessed"))


def test_export_install_into_a_fresh_results_folder_and_predict(env, fold_all, tmp_path):
    archive = str(tmp_path / "shared model.zip")
    run(["nnUNetv2_export_model_to_zip", "-d", DATASET, "-o", archive, "-c", "3d_fullres", "-tr", DECONVER,
         "-f", "all"], env)
    # another machine: nothing but the zip; a space and non-ASCII characters in the path
    fresh = dict(env, **{name: str(tmp_path / f"{name} ü ñ") for name in
                         ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results")})
    for name in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results"):
        os.makedirs(fresh[name])
    run(["nnUNetv2_install_pretrained_model_from_zip", archive], fresh)
    assert os.path.isfile(os.path.join(_model(fresh, DECONVER, "3d_fullres"), "fold_all", "checkpoint_final.pth"))
    installed = _predict(env, str(tmp_path / "installed"), "3d_fullres", DECONVER, "all", run_env=fresh)
    original = _predict(env, str(tmp_path / "original"), "3d_fullres", DECONVER, "all")
    for case in original:  # the same weights: the same segmentation
        np.testing.assert_array_equal(installed[case], original[case])


def test_predict_from_modelfolder_and_continue(env, fold_all, tmp_path):
    out = str(tmp_path / "from_folder")
    command = ["nnUNetv2_predict_from_modelfolder", "-i", _images(env), "-o", out, "-m",
               _model(env, DECONVER, "3d_fullres"), "-f", "all", *CPU]
    run(command, env)
    first = _read_predictions(env, out)
    case = sorted(first)[0]
    os.remove(os.path.join(out, f"{case}.nii.gz"))  # an interrupted run: one case still to do
    kept = os.stat(os.path.join(out, f"{sorted(first)[1]}.nii.gz")).st_mtime_ns
    run(command + ["--continue_prediction"], env)
    again = _read_predictions(env, out)
    np.testing.assert_array_equal(again[case], first[case])
    assert os.stat(os.path.join(out, f"{sorted(first)[1]}.nii.gz")).st_mtime_ns == kept  # not predicted again


def test_cascade_with_deconver_plans_lowres_then_cascade_fullres(env, tmp_path):
    run(["nnUNetv2_deconver_plan", "-d", DATASET, "-c", "3d_lowres", "3d_fullres", "-base_channels", 4], env)
    plans = _plans(env, "nnUNetDeconverPlans")["configurations"]
    assert plans["3d_lowres"]["next_stage"] == "3d_cascade_fullres"
    assert plans["3d_cascade_fullres"] == {"inherits_from": "3d_fullres", "previous_stage": "3d_lowres"}
    deconver_plans = ["-p", "nnUNetDeconverPlans"]
    # fold all: its final validation predicts every case for the next stage, which trains on them (with
    # folds 0-4 each fold predicts its own validation cases); that final validation raised before, the
    # plans naming a next stage they lacked
    lowres = _train(env, "3d_lowres", "all", plans="nnUNetDeconverPlans")
    next_stage = os.path.join(os.path.dirname(lowres), "predicted_next_stage", "3d_cascade_fullres")
    assert len([f for f in os.listdir(next_stage) if f.endswith(".b2nd")]) == 5
    _train(env, "3d_cascade_fullres", 0, plans="nnUNetDeconverPlans")
    out_lowres = str(tmp_path / "lowres")
    _predict(env, out_lowres, "3d_lowres", DECONVER, "all", *deconver_plans)
    # the cascade network takes the image and the one-hot low-resolution prediction (1 + 2 channels); only the
    # image is a file of -i (the channel check refused this before)
    _predict(env, str(tmp_path / "cascade"), "3d_cascade_fullres", DECONVER, 0, *deconver_plans,
             "-prev_stage_predictions", out_lowres)


def test_a_regular_install_trains_and_predicts(env, tmp_path):
    """The package installed as files (not editable) into a folder of its own, found through
    ``eval "$(nnunetv2_deconver env)"``: training and prediction run the installed trainers."""
    target = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation", "--target",
                    str(target), REPO], check=True, capture_output=True, cwd=tmp_path)
    installed = dict(env, PYTHONPATH=str(target))
    export = subprocess.run([sys.executable, "-c", "from nnunetv2_deconver.tools.cli import main; main(['env'])"],
                            env=installed, check=True, capture_output=True, text=True, cwd=tmp_path).stdout
    name, value = export.splitlines()[0].removeprefix("export ").split("=", 1)
    assert name == "nnUNet_extTrainer" and value.startswith(str(target))
    installed[name] = value
    run(["nnUNetv2_train", DATASET, "3d_fullres", 1, "-tr", DECONVER, "-device", "cpu"], installed)
    _predict(env, str(tmp_path / "pred"), "3d_fullres", DECONVER, 1, run_env=installed)
    where = subprocess.run([sys.executable, "-c", "import nnunetv2_deconver.trainers as t; print(t.__file__)"],
                           env=installed, check=True, capture_output=True, text=True, cwd=tmp_path).stdout
    assert where.startswith(str(target)), where  # the installed files, not the checkout
