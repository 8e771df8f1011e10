"""``nnUNetv2_deconver_plan`` as a command on small hand-written stock plans: the cascade it keeps
consistent, two runs at once on one plans name, and the one-line refusals of a bad ``-fragment`` and of a
3d configuration for single-slice images."""
import json

import pytest

from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

from nnunetv2_deconver.tools import plan as plan_command
from nnunetv2_deconver.nnunet.files import exclusive

DATASET = "Dataset996_Casc"


def _unet(patch, strides, median):
    dim = len(patch)
    return {"patch_size": list(patch), "median_image_size_in_voxels": list(median), "batch_size": 2,
            "data_identifier": f"nnUNetPlans_{dim}d", "spacing": [1.0] * dim,
            "architecture": {"network_class_name": "dynamic_network_architectures.architectures.unet.PlainConvUNet",
                             "arch_kwargs": {"n_stages": len(strides), "features_per_stage": [32] * len(strides),
                                             "conv_op": f"torch.nn.Conv{dim}d",
                                             "kernel_sizes": [[3] * dim] * len(strides), "strides": strides},
                             "_kw_requires_import": ["conv_op"]}}


def _stock_plans(tmp_path, monkeypatch, median_shape=(96, 96, 96)):
    """A stock nnUNetPlans.json with nnU-Net's cascade: 3d_lowres -> 3d_cascade_fullres (inherits 3d_fullres)."""
    for name in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results"):  # nnU-Net reads them at each use
        monkeypatch.setenv(name, str(tmp_path / name))
    folder = tmp_path / "nnUNet_preprocessed" / DATASET
    folder.mkdir(parents=True)
    strides = [[1, 1, 1]] + [[2, 2, 2]] * 3
    lowres = dict(_unet((32, 32, 32), strides, (48, 48, 48)), data_identifier="nnUNetPlans_3d_lowres",
                  next_stage="3d_cascade_fullres")
    configurations = {"2d": _unet((96, 96), [[1, 1]] + [[2, 2]] * 3, (96, 96)),
                      "3d_fullres": _unet((64, 64, 64), strides, (96, 96, 96)), "3d_lowres": lowres,
                      "3d_cascade_fullres": {"inherits_from": "3d_fullres", "previous_stage": "3d_lowres"}}
    plans = {"dataset_name": DATASET, "plans_name": "nnUNetPlans",
             "original_median_shape_after_transp": list(median_shape), "configurations": configurations}
    dataset = {"channel_names": {"0": "CT"}, "labels": {"background": 0, "a": 1, "b": 2}, "numTraining": 20,
               "file_ending": ".nii.gz"}
    (folder / "nnUNetPlans.json").write_text(json.dumps(plans))
    (folder / "dataset.json").write_text(json.dumps(dataset))
    return folder


def _one_error_line(capsys):
    err = capsys.readouterr().err.strip().splitlines()
    errors = [line for line in err if "error:" in line]
    assert len(errors) == 1 and "Traceback" not in "\n".join(err), err
    return errors[0]


def test_lowres_with_fullres_writes_the_cascade_nnunet_validates_into(tmp_path, monkeypatch):
    folder = _stock_plans(tmp_path, monkeypatch)
    assert plan_command.main(["-d", DATASET, "-c", "3d_lowres", "3d_fullres"]) == 0
    plans = json.loads((folder / "nnUNetDeconverPlans.json").read_text())
    manager = PlansManager(plans)
    # what nnU-Net's final validation of 3d_lowres does: load every next stage from the same plans
    for stage in manager.get_configuration("3d_lowres").next_stage_names:
        cascade = manager.get_configuration(stage)
        assert cascade.previous_stage_name == "3d_lowres"
        # the cascade is the Deconver 3d_fullres
        assert cascade.configuration["architecture"] == plans["configurations"]["3d_fullres"]["architecture"]
    assert manager.get_configuration("3d_lowres").next_stage_names == ["3d_cascade_fullres"]


def test_lowres_alone_names_no_stage_the_plans_lack(tmp_path, monkeypatch, capsys):
    folder = _stock_plans(tmp_path, monkeypatch)
    assert plan_command.main(["-d", DATASET, "-c", "3d_lowres"]) == 0
    manager = PlansManager(json.loads((folder / "nnUNetDeconverPlans.json").read_text()))
    assert manager.get_configuration("3d_lowres").next_stage_names is None
    assert "-c 3d_lowres 3d_fullres" in capsys.readouterr().err


def test_a_second_planner_on_the_same_plans_name_stops_in_one_line(tmp_path, monkeypatch, capsys):
    folder = _stock_plans(tmp_path, monkeypatch)
    target = folder / "nnUNetDeconverPlans.json"
    with exclusive(str(target)):  # the first run, still writing
        assert plan_command.main(["-d", DATASET, "-c", "3d_fullres", "-base_channels", "8"]) == 1
        assert "another process is writing" in _one_error_line(capsys)
        assert not target.exists()
    assert plan_command.main(["-d", DATASET, "-c", "3d_fullres"]) == 0  # once it is done
    assert sorted(p.name for p in folder.iterdir()) == ["dataset.json", "nnUNetDeconverPlans.json",
                                                         "nnUNetPlans.json"]  # no lock file left behind


@pytest.mark.parametrize("content,fragment,message", [
    ("null", "FILE", "a plans fragment is a JSON object"),
    (None, "", "-fragment is empty"),
    (None, " ", "-fragment is empty"),
    (None, "missing.json", "plans fragment missing.json not found"),
])
def test_a_bad_fragment_option_is_refused_in_one_line(tmp_path, monkeypatch, capsys, content, fragment, message):
    folder = _stock_plans(tmp_path, monkeypatch)
    if content is not None:
        fragment = str(tmp_path / "holding.json")
        (tmp_path / "holding.json").write_text(content)
    assert plan_command.main(["-d", DATASET, "-c", "3d_fullres", "-fragment", fragment]) == 1
    assert message in _one_error_line(capsys)
    assert not (folder / "nnUNetDeconverPlans.json").exists()


def test_single_slice_images_with_3d_fullres_are_sent_to_2d(tmp_path, monkeypatch, capsys):
    folder = _stock_plans(tmp_path, monkeypatch, median_shape=(1, 96, 96))
    plans = json.loads((folder / "nnUNetPlans.json").read_text())
    plans["configurations"] = {"2d": plans["configurations"]["2d"]}  # what nnU-Net plans for one slice
    (folder / "nnUNetPlans.json").write_text(json.dumps(plans))
    assert plan_command.main(["-d", DATASET, "-c", "3d_fullres"]) == 1
    line = _one_error_line(capsys)
    assert "single slices" in line and line.endswith("use -c 2d") and "nnUNetv2_plan_and_preprocess" not in line
