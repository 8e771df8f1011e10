"""A different plans identifier per trainer, as for the residual-encoder baseline:
``-tr nnUNetTrainer nnUNetTrainerDeconver -p nnUNetResEncUNetMPlans nnUNetPlans``."""
import csv
import json
import os

from nnunetv2_deconver.tools.compare import main

from helpers.compare_results import CASES, DATASET, TRAINERS

RESENC = "nnUNetResEncUNetMPlans"


def _resenc_plans(plans: dict) -> dict:
    """The fixture's plans with a residual-encoder U-Net, as nnUNetPlannerResEncM writes it (smaller here)."""
    plans = json.loads(json.dumps(plans))
    plans["plans_name"] = RESENC
    arch = plans["configurations"]["3d_fullres"]["architecture"]
    arch["network_class_name"] = "dynamic_network_architectures.architectures.unet.ResidualEncoderUNet"
    kwargs = arch["arch_kwargs"]
    kwargs["n_blocks_per_stage"] = [1, 2, 2]
    del kwargs["n_conv_per_stage"]
    return plans


def test_one_plans_identifier_per_trainer(results, capsys):
    base = results / "res" / DATASET
    stock = base / f"{TRAINERS[0]}__{RESENC}__3d_fullres"
    os.rename(base / f"{TRAINERS[0]}__nnUNetPlans__3d_fullres", stock)
    (stock / "plans.json").write_text(json.dumps(_resenc_plans(json.loads((stock / "plans.json").read_text()))))
    report = results / "report"
    assert main(["-d", "901", "-o", str(report), "--no-timing", "-tr", *TRAINERS, "-p", RESENC, "nnUNetPlans"]) == 0
    with open(report / "per_case.csv") as f:
        rows = list(csv.DictReader(f))
    names = {(r["run"], r["trainer"], r["plans"]) for r in rows}
    assert names == {(f"{TRAINERS[0]} ({RESENC})", TRAINERS[0], RESENC),
                     (f"{TRAINERS[1]} (nnUNetPlans)", TRAINERS[1], "nnUNetPlans")}
    assert len(rows) == 2 * len(CASES) * 2
    # the baseline's network is the residual encoder of its own plans: count its parameters independently
    import torch
    from dynamic_network_architectures.architectures.unet import ResidualEncoderUNet
    net = ResidualEncoderUNet(1, 3, [4, 8, 16], torch.nn.Conv3d, 3, [1, 2, 2], [1, 2, 2], 3, [1, 1], True,
                              torch.nn.InstanceNorm3d, {"eps": 1e-5, "affine": True}, None, None, torch.nn.LeakyReLU,
                              {"inplace": True})
    params = sum(p.numel() for p in net.parameters())
    summary = (report / "summary.md").read_text()
    line = [s for s in summary.splitlines() if s.startswith(f"| {TRAINERS[0]} ({RESENC}) |")][-1]
    assert f"| {params / 1e3:.2f}K |" in line
    # the pair must exist as named: a plans identifier without results is one line naming the folder
    assert main(["-d", "901", "-o", str(report), "--no-timing", "-tr", *TRAINERS, "-p", "nnUNetPlans"]) == 1
    err = capsys.readouterr().err
    assert f"no results folder {TRAINERS[0]}__nnUNetPlans__3d_fullres" in err
