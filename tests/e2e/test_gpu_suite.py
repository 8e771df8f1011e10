"""The prepared GPU suite's plumbing: ``benchmarks/gpu_suite.py --dry-run`` on the CPU (tiny shapes, one
repeat, no compile, 1-epoch ``nnUNetv2_train`` runs) completes every section and writes its JSON and its
markdown tables. It measures nothing; it keeps the script runnable for the day a GPU is lent."""
import importlib.util
import json
import os
import subprocess
import sys

from helpers.processes import REPO

SCRIPT = os.path.join(REPO, "benchmarks", "gpu_suite.py")
NETWORKS = {"PlainConvUNet", "ResEnc M", "Deconver", "Deconver checkpointed", "Deconver triton"}


def test_dry_run_writes_every_section(tmp_path):
    env = {k: v for k, v in os.environ.items()
           if k not in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results", "nnUNet_extTrainer")}
    done = subprocess.run([sys.executable, SCRIPT, "--dry-run", "--out", str(tmp_path)], capture_output=True,
                          text=True, env=dict(env, OMP_NUM_THREADS="2"), timeout=900)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    data = json.loads((tmp_path / "gpu_suite.json").read_text())
    assert data["dry_run"] is True and data["device"] == "cpu" and "stopped" not in data
    for name in ("plan", "ndc_layer", "network_step", "memory_model", "training"):
        assert data[name]["status"] == "ok", (name, data[name].get("error"), data[name].get("traceback"))

    ndc = data["ndc_layer"]["rows"]
    for label in ("naive fp32", "recompute fp32", "naive autocast", "recompute autocast"):
        assert ndc[label]["fwd_s"] > 0 and ndc[label]["fwd_bwd_s"] > 0 and "peak_bytes" in ndc[label], label
    assert "skipped" in ndc["triton fp32"]  # the fused kernels need a GPU

    steps = data["network_step"]["networks"]
    assert set(steps) == NETWORKS
    triton_installed = importlib.util.find_spec("triton") is not None
    for name, row in steps.items():
        if name == "Deconver triton" and not triton_installed:
            assert "skipped" in row
            continue
        assert "error" not in row, (name, row)
        assert row["step_s"] > 0 and row["parameters"] > 0 and row["peak_step_bytes"] > 0, name
        assert row["patch"] == data["plan"]["patch"] and row["batch"] == data["plan"]["batch"], name
    assert steps["ResEnc M"]["network_class"] == "ResidualEncoderUNet"
    assert steps["Deconver"]["network_class"] == "Deconver"

    model = data["memory_model"]["rows"]
    assert "Deconver" in model and model["Deconver"]["predicted_bytes"] > 0

    runs = data["training"]["runs"]
    assert set(runs) == {"nnUNetTrainerDeconver_timed", "nnUNetTrainer_timed"}
    for trainer, run in runs.items():
        assert "error" not in run and len(run["epoch_s"]) == 1, (trainer, run)

    table = (tmp_path / "gpu_suite.md").read_text()
    for heading in ("## NDC layer", "## Training step at one plan", "## The planner's memory model",
                    "## nnUNetv2_train"):
        assert heading in table
    assert "| path | precision |" in table and "| Deconver checkpointed |" in table
    assert "| nnUNetTrainerDeconver_timed |" in table
