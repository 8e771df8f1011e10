"""``nnUNetv2_deconver_compare`` on nnU-Net-style results folders written here (no training needed)."""
import csv
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from nnunetv2_deconver.tools.compare import main

from helpers.compare_results import CASES, DATASET, SHAPE, TRAINERS, write_label

def _rows(report):
    with open(report / "per_case.csv") as f:
        return list(csv.DictReader(f))


def test_report_numbers_and_files(results, capsys):
    report = results / "report"
    assert main(["-d", "901", "-c", "3d_fullres", "-tr", "nnUNetTrainer", "nnUNetTrainer", "-o", str(report)]) == 1
    assert "listed twice" in capsys.readouterr().err
    assert main(["-d", "901", "-c", "3d_fullres", "-o", str(report), "--no-timing",
                 "-tr", *TRAINERS]) == 0
    out = capsys.readouterr()
    assert "report:" in out.out and "scored 6/6" in out.err
    for name in ("summary.md", "per_case.csv", "dice_per_case.png", "dice_vs_flops.png", "worst_case.png"):
        assert (report / name).stat().st_size > 0, name
    rows = _rows(report)
    assert len(rows) == 2 * len(CASES) * 2
    by = {(r["run"], r["case"], r["class"]): r for r in rows}
    # a 4x4x4 cube shifted by one voxel along x: overlap 3*4*4 of 64 + 64 voxels
    assert float(by[(TRAINERS[1], "case_001", "blob")]["dice"]) == pytest.approx(2 * 48 / 128, abs=1e-5)
    assert float(by[(TRAINERS[0], "case_001", "blob")]["dice"]) == 1.0
    # the faces perpendicular to x move by one voxel = 0.8 mm; the other surface voxels have a
    # partner at the same place (distance 0) or one x-step away, so the directed 95th percentiles are 0.8
    assert float(by[(TRAINERS[1], "case_001", "blob")]["hd95_mm"]) == pytest.approx(0.8, abs=1e-5)
    # a missed structure: Dice 0 and HD95 = the image diagonal in mm
    diagonal = np.sqrt((10 * 1.5) ** 2 + (16 * 0.8) ** 2 * 2)
    assert float(by[(TRAINERS[1], "case_000", "dot")]["dice"]) == 0.0
    assert float(by[(TRAINERS[1], "case_000", "dot")]["hd95_mm"]) == pytest.approx(diagonal, rel=1e-5)
    assert {r["fold"] for r in rows} == {"0", "1"}
    summary = (report / "summary.md").read_text()
    # six paired cases, all differences of the same sign: the exact two-sided p is 2 / 2^6
    assert "| blob | nnUNetTrainerDeconver | 0.7500 | 0.7500 | 0.0312 |" in summary
    assert "| 2.00 |" in summary and "| 4.00 |" in summary  # s/epoch from the logs
    assert "worst_case.png" in summary and "case_000" in summary


def test_costs_are_counted_from_plans(results, capsys):
    report = results / "report"
    assert main(["-d", DATASET, "-o", str(report), "--no-timing", "-tr", "nnUNetTrainer", "nnUNetTrainerDeconver"]) == 0
    summary = (report / "summary.md").read_text()
    line = next(s for s in summary.splitlines() if s.startswith("| nnUNetTrainer |"))
    # PlainConvUNet with these widths: count its parameters independently
    from dynamic_network_architectures.architectures.unet import PlainConvUNet
    import torch
    net = PlainConvUNet(1, 3, [4, 8, 16], torch.nn.Conv3d, 3, [1, 2, 2], [1, 1, 1], 3, [1, 1], True,
                        torch.nn.InstanceNorm3d, {"eps": 1e-5, "affine": True}, None, None, torch.nn.LeakyReLU,
                        {"inplace": True})
    params = sum(p.numel() for p in net.parameters())
    assert f"| {params / 1e3:.2f}K |" in line


def test_missing_fold_is_named_and_partial_report_on_request(results, capsys):
    import shutil
    shutil.rmtree(results / "res" / DATASET / f"{TRAINERS[1]}__nnUNetPlans__3d_fullres" / "fold_1")
    report = results / "report"
    assert main(["-d", "901", "-o", str(report), "--no-timing"]) == 1
    err = capsys.readouterr().err
    assert "nnUNetTrainerDeconver: fold 1 is missing" in err
    assert "Traceback" not in err
    assert not (report / "summary.md").exists()
    assert main(["-d", "901", "-o", str(report), "--no-timing", "--partial"]) == 1
    assert "partial report" in capsys.readouterr().err
    rows = _rows(report)
    assert {r["case"] for r in rows} == set(CASES[:3])
    assert "fold 1 is missing" in (report / "summary.md").read_text()


def test_bad_files_geometry_and_labels_are_named(results, capsys):
    base = results / "res" / DATASET
    validation = base / f"{TRAINERS[1]}__nnUNetPlans__3d_fullres" / "fold_0" / "validation"
    (validation / "case_001.nii.gz").write_bytes(b"")
    (validation / "case_002.nii.gz").write_bytes(b"not a nifti file")
    write_label(np.zeros(SHAPE), str(base / f"{TRAINERS[0]}__nnUNetPlans__3d_fullres" / "fold_1" / "validation" /
                                "case_003.nii.gz"), spacing=(1.0, 1.0, 1.0))
    seg = np.zeros(SHAPE)
    seg[0, 0, 0] = 7
    fold_1 = base / f"{TRAINERS[0]}__nnUNetPlans__3d_fullres" / "fold_1" / "validation"
    write_label(seg, str(fold_1 / "case_004.nii.gz"))
    (base / f"{TRAINERS[0]}__nnUNetPlans__3d_fullres" / "fold_1" / "validation" / "extra_case.nii.gz").write_bytes(
        (validation / "case_000.nii.gz").read_bytes())
    assert main(["-d", "901", "-o", str(results / "report"), "--no-timing"]) == 1
    err = capsys.readouterr().err
    assert "nnUNetTrainerDeconver: no prediction for case(s) extra_case" in err
    assert "no reference label for case(s) extra_case" in err
    assert main(["-d", "901", "-o", str(results / "report"), "--no-timing", "--partial"]) == 1
    err = capsys.readouterr().err
    assert "case case_001: prediction" in err and "empty file" in err
    assert "case case_002: prediction" in err and "is not a valid gzip file" in err
    assert "case case_003: prediction" in err and "geometry differs from the reference: spacing" in err
    assert "case case_004: prediction" in err and "holds labels [7] that dataset.json does not define" in err
    assert {r["case"] for r in _rows(results / "report")} == {"case_000", "case_005"}


def test_label_sets_differ(results, capsys):
    path = results / "res" / DATASET / f"{TRAINERS[1]}__nnUNetPlans__3d_fullres" / "dataset.json"
    dataset_json = json.loads(path.read_text())
    dataset_json["labels"] = {"background": 0, "blob": 1}
    path.write_text(json.dumps(dataset_json))
    assert main(["-d", "901", "-o", str(results / "report"), "--no-timing"]) == 1
    assert "label sets differ" in capsys.readouterr().err


def test_region_based_dataset(results, capsys):
    """Regions as in nnU-Net's region-based datasets: each is scored as the union of its labels."""
    for trainer in TRAINERS:
        path = results / "res" / DATASET / f"{trainer}__nnUNetPlans__3d_fullres" / "dataset.json"
        dataset_json = json.loads(path.read_text())
        dataset_json.update(labels={"background": 0, "both": [1, 2], "dot": 2}, regions_class_order=[1, 2])
        path.write_text(json.dumps(dataset_json))
    report = results / "report"
    assert main(["-d", "901", "-o", str(report), "--no-timing"]) == 0
    by = {(r["run"], r["case"], r["class"]): r for r in _rows(report)}
    assert {r["class"] for r in by.values()} == {"both", "dot"}
    # the region holds the 64-voxel cube and the dot; the shifted cube keeps 48 of 64, the dot is kept
    assert float(by[(TRAINERS[1], "case_001", "both")]["dice"]) == pytest.approx(2 * 49 / 130, abs=1e-5)
    assert by[(TRAINERS[1], "case_001", "both")]["label_or_region"] == "(1, 2)"


@pytest.mark.e2e
def test_predictions_folders_mode_and_console_script(results):
    """-i with a labels folder, through the installed console script (one line per problem, no traceback)."""
    base = results / "res" / DATASET
    folders = [str(base / f"{t}__nnUNetPlans__3d_fullres" / "fold_0" / "validation") for t in TRAINERS]
    for folder, trainer in zip(folders, TRAINERS):
        for name in ("dataset.json", "plans.json"):
            (results / "tmp.json").write_text((base / f"{trainer}__nnUNetPlans__3d_fullres" / name).read_text())
            os.replace(results / "tmp.json", os.path.join(folder, name))
    labels = str(results / "pre" / DATASET / "gt_segmentations")
    script = os.path.join(os.path.dirname(sys.executable), "nnUNetv2_deconver_compare")
    command = [script, "-i", *folders, "-ref", labels, "-o", str(results / "r2"), "--device", "cpu"]
    done = subprocess.run(command, capture_output=True, text=True, env={**os.environ, "nnUNet_results": ""})
    assert done.returncode == 0, done.stderr
    assert "Dice mean" in done.stdout and "fwd s/patch" in done.stdout
    assert len(_rows(results / "r2")) == 2 * 3 * 2
    done = subprocess.run([script, "-i", folders[0], "-o", str(results / "r3")], capture_output=True, text=True)
    assert done.returncode == 1
    assert "one predictions folder per trainer" in done.stderr and "Traceback" not in done.stderr


def test_a_case_predicted_in_two_folds_is_a_problem(results, capsys):
    """nnU-Net's fold_all, or overlapping custom splits, predict a case twice: neither is dropped silently."""
    import shutil
    base = results / "res" / DATASET / f"{TRAINERS[1]}__nnUNetPlans__3d_fullres"
    shutil.copy(base / "fold_0" / "validation" / "case_000.nii.gz", base / "fold_1" / "validation")
    report = results / "report"
    assert main(["-d", "901", "-o", str(report), "--no-timing"]) == 1
    err = capsys.readouterr().err
    assert f"{TRAINERS[1]}: case(s) case_000 predicted in fold 0 and fold 1" in err and "-f" in err, err
    assert not report.exists()
    assert main(["-d", "901", "-o", str(report), "--no-timing", "--partial"]) == 1
    assert "predicted in fold 0 and fold 1" in (report / "summary.md").read_text()
    assert {(r["run"], r["fold"]) for r in _rows(report) if r["case"] == "case_000"} == {(TRAINERS[0], "0"),
                                                                                        (TRAINERS[1], "1")}
