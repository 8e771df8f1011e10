"""The demo end to end through nnU-Net's real command-line tools, at a reduced budget, then resumed.

One epoch of one iteration is too short to learn, so the Dice values are only checked to be in [0, 1]: an
all-background prediction would pass. ``test_learning.py`` tests that training learns.
"""
import csv
import os
import subprocess
import sys


def test_demo_reduced_budget_end_to_end_and_resume(tmp_path):
    script = os.path.join(os.path.dirname(sys.executable), "nnunetv2_deconver")
    output = tmp_path / "demo"
    env = {k: v for k, v in os.environ.items()
           if k not in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results", "nnUNet_extTrainer")}
    # as README's `.venv/bin/nnunetv2_deconver demo`: the environment's bin folder is not on PATH
    bin_folder = os.path.realpath(os.path.dirname(sys.executable))
    env["PATH"] = os.pathsep.join(p for p in env.get("PATH", "").split(os.pathsep) if os.path.realpath(p) != bin_folder)
    command = [script, "demo", "--output", str(output), "--device", "cpu", "--epochs", "1", "--iterations", "1",
               "--cases", "8", "--size", "24"]
    done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=900)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    for step in ("1/5", "2/5", "3/5", "4/5", "5/5"):
        assert f"] {step}" in done.stdout
    assert "Dice mean" in done.stdout and "demo wall time" in done.stdout
    report = output / "report"
    for name in ("summary.md", "per_case.csv", "dice_per_case.png", "dice_vs_flops.png", "worst_case.png"):
        assert (report / name).stat().st_size > 0, name
    with open(report / "per_case.csv") as f:
        rows = list(csv.DictReader(f))
    # 2 held-out cases x 2 trainers x 2 classes
    assert len(rows) == 8
    assert {r["run"] for r in rows} == {"nnUNetTrainer_demo", "nnUNetTrainerDeconver_demo"}
    assert all(0.0 <= float(r["dice"]) <= 1.0 for r in rows)
    for trainer in ("nnUNetTrainer_demo", "nnUNetTrainerDeconver_demo"):
        fold = output / "nnUNet_results" / "Dataset990_DeconverDemo" / f"{trainer}__nnUNetPlans__2d" / "fold_0"
        assert (fold / "checkpoint_final.pth").is_file()

    # a re-run resumes: every step before the comparison is skipped
    again = subprocess.run(command, capture_output=True, text=True, env=env, timeout=300)
    assert again.returncode == 0, again.stderr[-3000:]
    assert again.stdout.count("already") == 1 + 1 + 2 + 2
    assert "Dice mean" in again.stdout

    bad = subprocess.run([script, "demo", "--output", str(output), "--epochs", "0"], capture_output=True, text=True)
    assert bad.returncode == 2 and "Traceback" not in bad.stderr and "--epochs" in bad.stderr
