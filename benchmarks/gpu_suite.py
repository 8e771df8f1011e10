"""Every GPU measurement the docs list, in one run of at most 8 minutes on one H100/H200; writes
``gpu_suite.json`` and ``gpu_suite.md`` into ``--out``.

1. ``ndc_layer``: the NDC layer paths (``naive``, ``recompute``, ``triton``) at 128^3, C = 32, R = 4, batch 1,
   fp32 and under fp16 autocast: forward and forward+backward time, peak memory.
2. ``network_step``: one training step (AMP: fp16 autocast + GradScaler, ``torch.compile``; deep-supervision
   cross-entropy, SGD) of Deconver (``nnUNetTrainerDeconver``), Deconver checkpointed
   (``nnUNetTrainerDeconverCheckpointed``), Deconver with the fused Triton NDC forced
   (``force_implementation('triton')``), stock PlainConvUNet and ResEnc M (``nnUNetPlannerResEncM``'s plans),
   each built by its trainer's ``build_network_architecture`` at the same patch and batch: the plan nnU-Net's
   planner makes for the generated dataset (6 volumes of 160^3 at 1 mm: 3d_fullres, patch 128^3, batch 2,
   6 stages to 320). Medians of interleaved repeats, compile time, ``max_memory_allocated``
   (see ``gpu_suite_measure.py``).
3. ``training``: a short real ``nnUNetv2_train`` (2 epochs of 15 iterations, fold ``all``, no final
   validation) of ``nnUNetTrainerDeconver_timed`` and ``nnUNetTrainer_timed`` on that dataset: epoch times,
   peak GPU memory and the GradScaler's skipped steps per epoch, from the training logs.
4. ``memory_model``: the planner's memory model (``nnunet/memory_model.py``) against the measured peaks.

Each section records its error instead of stopping the run. A global deadline (``--budget``, 450 s) ends
the measurements early and the files are written with what was measured; a watchdog writes them and
exits at the deadline plus 20 s whatever is running.

On the GPU machine (``../shared/tools/gpu/``: run ``bash ../shared/tools/gpu/pack.sh`` once here first),
with ``carry: [".gpu"]`` and a timeout of about 540 s:

    . .gpu/setup.sh && python benchmarks/gpu_suite.py --out $OUT/gpu

On the CPU, the same plumbing with tiny shapes, one repeat, no compile and a 1-epoch training (CI):

    python benchmarks/gpu_suite.py --dry-run --out /tmp/gpu_suite
"""
import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from _common import machine_description  # noqa: E402
from gpu_suite_measure import NETWORKS, memory_model_rows, ndc_layer, network_steps  # noqa: E402
from gpu_suite_report import markdown  # noqa: E402

DATASET_ID, CONFIGURATION = 990, "3d_fullres"
TRAINERS = ("nnUNetTrainerDeconver_timed", "nnUNetTrainer_timed")
SECTIONS = ("ndc_layer", "network_step", "memory_model", "training")
GPU = dict(shape=160, cases=6, ndc_size=128, ndc_channels=32, ndc_repeats=5, rounds=7, compile=True, epochs=2,
           iterations=15, processes=12, budget=450.0)
DRY = dict(shape=16, cases=4, ndc_size=8, ndc_channels=4, ndc_repeats=1, rounds=1, compile=False, epochs=1,
           iterations=2, processes=0, budget=600.0)


class Deadline:
    def __init__(self, seconds: float):
        self.start, self.seconds = time.monotonic(), seconds

    def left(self) -> float:
        return self.seconds - (time.monotonic() - self.start)

    def elapsed(self) -> float:
        return time.monotonic() - self.start


class Results:
    """The JSON being built; written by the main thread at the end, or by the watchdog at the deadline."""

    def __init__(self, out: Path, data: dict):
        self.out, self.data, self.lock, self.processes = out, data, threading.RLock(), []

    def set(self, section: str, value: dict) -> None:
        with self.lock:
            self.data[section] = value

    def write(self, note: str = "") -> None:
        with self.lock:
            if note:
                self.data["stopped"] = note
            self.out.mkdir(parents=True, exist_ok=True)
            text = json.dumps(self.data, indent=1, default=str)
            (self.out / "gpu_suite.json").write_text(text)
            (self.out / "gpu_suite.md").write_text(markdown(json.loads(text)))

    def register(self, process) -> None:
        self.processes.append(process)

    def kill_children(self) -> None:
        for process in self.processes:
            if process.poll() is None:
                try:
                    os.killpg(process.pid, 9)
                except OSError:
                    pass


def section(results: Results, name: str, run, *args) -> None:
    """Run one section; its result, or its error and traceback, goes under ``name``."""
    start = time.monotonic()
    try:
        value = dict(run(*args), status="ok")
    except Exception as error:  # one section's failure must not lose the others
        value = {"status": "error", "error": f"{type(error).__name__}: {error}",
                 "traceback": traceback.format_exc()[-3000:]}
    value["seconds"] = round(time.monotonic() - start, 1)
    results.set(name, value)
    print(f"{name}: {value['status']} in {value['seconds']} s {value.get('error', '')}", flush=True)


def tool(name: str) -> str:
    """An nnU-Net console program: next to this Python, or on PATH (the GPU machine's setup.sh puts them there)."""
    local = Path(sys.executable).parent / name
    return str(local) if local.exists() else shutil.which(name) or name


def run_tool(results: Results, args, timeout: float, env=None) -> str:
    process = subprocess.Popen([tool(args[0]), *map(str, args[1:])], stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True, env=env, start_new_session=True)
    results.register(process)
    try:
        output, _ = process.communicate(timeout=max(timeout, 1))
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, 9)
        raise RuntimeError(f"{args[0]} stopped after {timeout:.0f} s (deadline)") from None
    if process.returncode:
        raise RuntimeError(f"{' '.join(map(str, args))} failed ({process.returncode}): {output[-2000:]}")
    return output


def prepare(results: Results, root: Path, s: dict, deadline: Deadline) -> dict:
    """The dataset (plan_parity's generator), both planners' plans and the 3d_fullres preprocessing."""
    from plan_parity import write_dataset
    write_dataset(root / "raw", DATASET_ID, (s["shape"],) * 3, (1.0, 1.0, 1.0), cases=s["cases"])
    processes = str(max(s["processes"], 1))
    run_tool(results, ["nnUNetv2_extract_fingerprint", "-d", DATASET_ID, "-np", processes], deadline.left())
    run_tool(results, ["nnUNetv2_plan_experiment", "-d", DATASET_ID], deadline.left())
    run_tool(results, ["nnUNetv2_plan_experiment", "-d", DATASET_ID, "-pl", "nnUNetPlannerResEncM"], deadline.left())
    run_tool(results, ["nnUNetv2_preprocess", "-d", DATASET_ID, "-c", CONFIGURATION, "-np", processes],
             deadline.left())
    folder = root / "preprocessed" / f"Dataset{DATASET_ID}_Parity"
    stock = json.loads((folder / "nnUNetPlans.json").read_text())["configurations"][CONFIGURATION]
    arch = stock["architecture"]["arch_kwargs"]
    return {"plans_folder": str(folder), "dataset": f"{s['cases']} volumes of {s['shape']}^3 at 1 mm",
            "patch": stock["patch_size"], "batch": stock["batch_size"], "stages": arch["n_stages"],
            "features_per_stage": arch["features_per_stage"]}


def training(results: Results, root: Path, s: dict, device: torch.device, deadline: Deadline) -> dict:
    """A short ``nnUNetv2_train`` of each trainer, in turn; epoch times and log lines from the training logs."""
    from nnunetv2_deconver.nnunet.trainer_discovery import trainers_folder
    from nnunetv2_deconver.nnunet.trainer_mixins import (EPOCHS_VARIABLE, ITERATIONS_VARIABLE,
                                                         PEAK_MEMORY_LOG_PREFIX, SKIPPED_STEPS_LOG_PREFIX)
    env = dict(os.environ, nnUNet_extTrainer=trainers_folder(), nnUNet_n_proc_DA=str(s["processes"]),
               **{EPOCHS_VARIABLE: str(s["epochs"]), ITERATIONS_VARIABLE: str(s["iterations"])})
    runs = {}
    for index, trainer in enumerate(TRAINERS):
        share = (deadline.left() - 15) / (len(TRAINERS) - index)
        if share < 30:
            runs[trainer] = {"skipped": "deadline"}
            continue
        start = time.monotonic()
        try:
            run_tool(results, ["nnUNetv2_train", DATASET_ID, CONFIGURATION, "all", "-tr", trainer, "-device",
                               device.type], share, env)
            run = {}
        except RuntimeError as error:
            run = {"error": str(error)}
        run["wall_s"] = round(time.monotonic() - start, 1)
        model = f"{trainer}__nnUNetPlans__{CONFIGURATION}"
        fold = root / "results" / f"Dataset{DATASET_ID}_Parity" / model / "fold_all"
        lines = [line.split(": ", 1)[-1].strip() for log in sorted(fold.glob("training_log_*.txt"))
                 for line in log.read_text().splitlines()]
        run["epoch_s"] = [float(line.split()[2]) for line in lines if line.startswith("Epoch time:")]
        run["peak_gpu_memory"] = [line for line in lines if line.startswith(PEAK_MEMORY_LOG_PREFIX)]
        run["grad_scaler"] = [line for line in lines if line.startswith(SKIPPED_STEPS_LOG_PREFIX)]
        runs[trainer] = run
    return {"epochs": s["epochs"], "iterations_per_epoch": s["iterations"], "runs": runs}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, type=Path, help="folder for gpu_suite.json and gpu_suite.md")
    parser.add_argument("--dry-run", action="store_true", help="the plumbing on the CPU with tiny shapes")
    parser.add_argument("--budget", type=float, help="seconds before the measurements stop (GPU 450, dry run 600)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args(argv)
    s = dict(DRY if args.dry_run else GPU)
    device = torch.device("cpu" if args.dry_run else args.device)
    deadline = Deadline(args.budget or s["budget"])
    results = Results(args.out, {"machine": machine_description(device), "torch": torch.__version__,
                                 "dry_run": args.dry_run, "device": device.type, "budget_s": deadline.seconds})

    def watchdog():
        results.kill_children()
        results.write(f"watchdog: the run passed its deadline ({deadline.seconds:.0f} s) by 20 s")
        os._exit(3)

    timer = threading.Timer(deadline.left() + 20, watchdog)
    timer.daemon = True
    timer.start()
    with tempfile.TemporaryDirectory(prefix="gpu_suite_") as tmp:
        from plan_parity import nnunet_folders
        root = nnunet_folders(Path(tmp))
        # the dataset and plans are CPU work: made while the GPU measures the layer
        preparing = threading.Thread(target=section, args=(results, "plan", prepare, results, root, s, deadline))
        preparing.start()
        section(results, "ndc_layer", ndc_layer, device, s["ndc_size"], s["ndc_channels"], 4, s["ndc_repeats"],
                deadline)
        results.write()
        if device.type == "cuda":
            torch.cuda.empty_cache()  # the layer's cached blocks, for the workers
        preparing.join()
        plan = results.data["plan"]
        if plan["status"] == "ok":
            section(results, "network_step", lambda: {"networks": network_steps(
                Path(plan["plans_folder"]), CONFIGURATION, plan["patch"], plan["batch"], device, s["compile"],
                s["rounds"], list(NETWORKS), deadline, ready_by=200, done_by=180, log_folder=root,
                register=results.register), "compiled": s["compile"],
                "precision": "fp16 autocast + GradScaler" if device.type == "cuda" else "fp32"})
            steps = results.data["network_step"].get("networks", {})
            section(results, "memory_model", lambda: {"rows": memory_model_rows(steps)})
            results.write()
            section(results, "training", training, results, root, s, device, deadline)
        else:
            for name in SECTIONS[1:]:
                results.set(name, {"status": "error", "error": "no plan: " + plan.get("error", "")})
        timer.cancel()
        results.data["elapsed_s"] = round(deadline.elapsed(), 1)
        results.write()
    print(f"wrote {args.out / 'gpu_suite.json'} and {args.out / 'gpu_suite.md'} in {deadline.elapsed():.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
