"""Bad values fail where they are given, with one-line ValueErrors: the network and NDC options, the NDC
operands, the planner's options and target name, and nnUNetv2_predict's input channels."""
import json
import subprocess
import sys

import pytest
import torch

from nnunetv2_deconver.network import Deconver
from nnunetv2_deconver.nnunet.checks import channel_files, check_channel_files, check_prediction_inputs
from nnunetv2_deconver.nnunet.planner import MARKER, check_options, check_plans_name
from nnunetv2_deconver.nnunet.plans import PlanError
from nnunetv2_deconver.ops import ndc as ndc_module
from nnunetv2_deconver.ops.ndc import NDC, nonnegative_deconvolution

SMALL = dict(input_channels=1, num_classes=2, n_stages=2, features_per_stage=[4, 8], conv_op=torch.nn.Conv3d,
             kernel_sizes=3, strides=[1, 2])


@pytest.mark.parametrize("change, named", [
    ({"ndc_eps": 0}, "eps"), ({"ndc_eps": -1e-8}, "eps"), ({"ndc_eps": float("nan")}, "eps"),
    ({"ndc_eps": float("inf")}, "eps"), ({"ndc_eps": "1e-8"}, "eps"), ({"ndc_eps": True}, "eps"),
    ({"ndc_iterations": 0}, "iterations"), ({"ndc_iterations": 1.5}, "iterations"),
    ({"ndc_ratio": 0}, "ndc_ratio"), ({"ndc_ratio": 2.5}, "ndc_ratio"), ({"mlp_ratio": 0}, "mlp_ratio"),
    ({"strides": [1, 0]}, "stride"), ({"strides": [1, 2, 2]}, "strides"), ({"kernel_sizes": [3, 3.5]}, "kernel"),
    ({"kernel_sizes": [[3, 3], [3, 3, 3]]}, "kernel"), ({"features_per_stage": [4]}, "features_per_stage"),
    ({"dtc_receptive_field": 0}, "dtc_receptive_field"), ({"dtc_receptive_field": -2.0}, "dtc_receptive_field"),
    ({"dtc_receptive_field": float("nan")}, "dtc_receptive_field"), ({"dtc_receptive_field": "2"},
                                                                      "dtc_receptive_field"),
    ({"ndc_groups": 3}, "ndc_groups"), ({"ndc_groups": 0}, "ndc_groups"), ({"ndc_groups": 2.0}, "ndc_groups"),
    ({"n_blocks_per_stage": 1.5}, "n_blocks"), ({"n_blocks_per_stage": [1, -1]}, "n_blocks"),
    ({"n_blocks_per_stage_decoder": [1, 1]}, "n_blocks_per_stage_decoder"), ({"upsample": "bilinear"}, "upsample"),
    ({"checkpoint_blocks": "yes"}, "checkpoint_blocks"), ({"stem_kernel_size": [3, 3]}, "stem_kernel_size"),
])
def test_deconver_refuses_each_bad_option_in_one_line(change, named):
    with pytest.raises(ValueError, match=named) as error:
        Deconver(**{**SMALL, **change})
    assert "\n" not in str(error.value)


@pytest.mark.parametrize("kwargs, named", [
    (dict(channels=0, kernel_size=(3,)), "channels"), (dict(channels=4, kernel_size=(3,), groups=2.0), "groups"),
    (dict(channels=4, kernel_size=(3,), ratio=0), "ratio"), (dict(channels=4, kernel_size=(3,), eps=0.0), "eps"),
    (dict(channels=4, kernel_size=(3,), iterations=0), "iterations"),
    (dict(channels=4, kernel_size=(3.0,)), "kernel"),
])
def test_ndc_layer_refuses_bad_options(kwargs, named):
    with pytest.raises(ValueError, match=named):
        NDC(**kwargs)


def _operands(dtype=torch.float32):
    generator = torch.Generator().manual_seed(0)
    return (torch.rand(1, 2, 5, 5, generator=generator, dtype=dtype),
            torch.rand(1, 4, 5, 5, generator=generator, dtype=dtype),
            torch.rand(2, 2, 3, 3, generator=generator, dtype=dtype))


@pytest.mark.parametrize("negative", [0, 1, 2])
def test_negative_operands_are_refused_unless_the_caller_opts_out(negative):
    operands = list(_operands())
    operands[negative] = operands[negative] - 2.0
    name = ("x", "source", "filters")[negative]
    with pytest.raises(ValueError, match=rf"nonnegative.*{name} \(min"):
        nonnegative_deconvolution(*operands, groups=2)
    assert torch.isfinite(nonnegative_deconvolution(*operands, groups=2, check_nonnegative=False)).all()


def test_sign_check_is_skipped_while_compiling_and_in_the_layer(monkeypatch):
    x, source, filters = _operands()
    monkeypatch.setattr(ndc_module, "_compiling", lambda: True)
    nonnegative_deconvolution(-x, source, filters, groups=2)
    monkeypatch.undo()

    def refuse(*args):
        raise AssertionError("the NDC layer passes ReLU outputs: it must not pay for the sign check")
    monkeypatch.setattr(ndc_module, "_check_nonnegative", refuse)
    NDC(channels=2, kernel_size=(3, 3))(x)


@pytest.mark.parametrize("dtype, expected", [(torch.float16, torch.float32), (torch.bfloat16, torch.float32),
                                             (torch.float32, torch.float32), (torch.float64, torch.float64)])
def test_output_dtype_is_the_promotion_with_float32_inside_and_outside_autocast(dtype, expected):
    # the documented rule: promote_types(x.dtype, source.dtype, float32), autocast or not
    assert nonnegative_deconvolution(*_operands(dtype), groups=2).dtype == expected
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert nonnegative_deconvolution(*_operands(dtype), groups=2).dtype == expected


def test_validation_survives_python_dash_o():
    code = ("import torch\nfrom nnunetv2_deconver.network import Deconver\n"
            "assert False, 'asserts run: not -O'\n")  # under -O this line is skipped
    code += ("try:\n    Deconver(input_channels=1, num_classes=2, n_stages=2, features_per_stage=[4, 8], "
             "conv_op=torch.nn.Conv3d, kernel_sizes=3, strides=[1, 2], ndc_eps=0)\n"
             "except ValueError as e:\n    print('ValueError:', e)\n")
    proc = subprocess.run([sys.executable, "-O", "-c", code], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.startswith("ValueError: NDC eps must be a finite number > 0"), proc.stdout


@pytest.mark.parametrize("memory, channels, named", [
    (float("nan"), 32, "gpu_memory_target"), (float("inf"), 32, "gpu_memory_target"), (0.0, 32, "gpu_memory_target"),
    (-8.0, 32, "gpu_memory_target"), (8.0, 0, "base_channels"), (8.0, -32, "base_channels"),
    (8.0, 513, "base_channels"),
])
def test_planner_options_are_checked(memory, channels, named):
    with pytest.raises(PlanError, match=f"-{named} must be"):
        check_options(memory, channels)
    check_options(8.0, 32)


def test_planner_never_writes_over_nnunets_plans_or_a_file_it_did_not_write(tmp_path):
    for name in ("nnUNetPlans", "nnUNetResEncUNetMPlans", "nnUNetResEncUNetLPlans", "MyStockPlans"):
        with pytest.raises(PlanError, match="nnU-Net's own or the source plans"):
            check_plans_name(name, "MyStockPlans", str(tmp_path / f"{name}.json"), force=True)
    foreign, ours = tmp_path / "Foreign.json", tmp_path / "Ours.json"
    foreign.write_text(json.dumps({"plans_name": "Foreign", "configurations": {}}))
    ours.write_text(json.dumps({"plans_name": "Ours", MARKER: {"version": "0"}}))
    with pytest.raises(PlanError, match="not written by nnUNetv2_deconver_plan.*--force"):
        check_plans_name("Foreign", "nnUNetPlans", str(foreign), force=False)
    check_plans_name("Foreign", "nnUNetPlans", str(foreign), force=True)
    check_plans_name("Ours", "nnUNetPlans", str(ours), force=False)
    check_plans_name("New", "nnUNetPlans", str(tmp_path / "New.json"), force=False)


def _model_folder(path, channels=1, file_ending=".nii.gz"):
    path.mkdir(parents=True)
    (path / "dataset.json").write_text(json.dumps({"channel_names": {str(c): "MRI" for c in range(channels)},
                                                   "labels": {"background": 0, "a": 1, "b": 2},
                                                   "numTraining": 2, "file_ending": file_ending}))
    return path


def test_prediction_channel_check(tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    for name in ("a_0000.nii.gz", "a_0001.nii.gz", "b_0000.nii.gz", "b_0001.nii.gz", "notes.txt"):
        (images / name).write_text("")
    check_channel_files(str(images), 2, ".nii.gz")
    with pytest.raises(ValueError, match=r"takes 1 image channel.*case a has channel\(s\) \[0, 1\] \(2 case"):
        check_channel_files(str(images), 1, ".nii.gz")
    model = _model_folder(tmp_path / "model", channels=1)
    argv = ["/env/bin/nnUNetv2_predict_from_modelfolder", "-i", str(images), "-o", "out", "-m", str(model)]
    with pytest.raises(ValueError, match="nnUNetv2_predict -i"):
        check_prediction_inputs(argv)
    check_prediction_inputs(["/env/bin/nnUNetv2_train", "-i", str(images), "-m", str(model)])  # no check
    check_prediction_inputs(argv[:1] + ["-i", str(tmp_path / "missing"), "-m", str(model)])  # nnU-Net reports it
    check_prediction_inputs(argv[:1] + ["-i", str(images), "-m", str(tmp_path / "no_model")])  # nnU-Net reports it


def test_prediction_channel_check_lists_only_the_dataset_file_ending(tmp_path):
    # nnU-Net's predictor lists only CASE_XXXX + file_ending: sidecar files are not cases nor channels
    images = tmp_path / "images"
    images.mkdir()
    for name in ("a_0000.nii.gz", "a_0001.json", "notes_2024.txt", "b_0000.nii.gz", "b_0003.mha"):
        (images / name).write_text("")
    model = _model_folder(tmp_path / "model", channels=1)
    check_prediction_inputs(["nnUNetv2_predict_from_modelfolder", "-i", str(images), "-o", "o", "-m", str(model)])
    assert channel_files(str(images), ".nii.gz") == {"a": [0], "b": [0]}


def test_prediction_channel_check_of_a_cascade_counts_image_files_only(tmp_path, monkeypatch):
    # a 3d_cascade_fullres network takes 1 image channel + 2 one-hot channels of -prev_stage_predictions;
    # only the image channel is a file of -i
    results = tmp_path / "results"
    _model_folder(results / "Dataset301_Casc" / "nnUNetTrainerDeconver__nnUNetPlans__3d_cascade_fullres", channels=1)
    for name in ("nnUNet_raw", "nnUNet_preprocessed"):
        monkeypatch.setenv(name, str(tmp_path / name))
    monkeypatch.setenv("nnUNet_results", str(results))
    images = tmp_path / "images"
    images.mkdir()
    (images / "a_0000.nii.gz").write_text("")
    # -device and -prev_stage_predictions are no -d or -p
    argv = ["nnUNetv2_predict", "-device", "cpu", "-i", str(images), "-o", "o", "-d", "301", "-c", "3d_cascade_fullres",
            "-tr", "nnUNetTrainerDeconver", "-prev_stage_predictions", str(tmp_path / "lowres")]
    check_prediction_inputs(argv)
    (images / "a_0001.nii.gz").write_text("")  # and a wrong folder still fails
    with pytest.raises(ValueError, match=r"takes 1 image channel.*case a has channel\(s\) \[0, 1\]"):
        check_prediction_inputs(argv)
