"""``nnunetv2_deconver demo``: stock nnU-Net against Deconver on a synthetic dataset, in one command.

Steps, each run through nnU-Net's own command-line tools in subprocesses and each skipped when a
previous run of the demo in the same ``--output`` already finished it (so a re-run resumes):

1. write a small synthetic 2D dataset (blurred, noisy blobs and thin tubes; :mod:`.synthetic`),
2. ``nnUNetv2_plan_and_preprocess`` (2d: nnU-Net's configuration for single-slice images),
3. ``nnUNetv2_train`` fold 0 with ``nnUNetTrainer_demo`` and ``nnUNetTrainerDeconver_demo``, the
   same budget for both (continued with ``--c`` from the last epoch's checkpoint if interrupted),
4. ``nnUNetv2_predict`` on the held-out cases,
5. :func:`nnunetv2_deconver.tools.compare.compare` on those predictions against their labels.

The demo sets ``nnUNet_raw``, ``nnUNet_preprocessed``, ``nnUNet_results`` and ``nnUNet_extTrainer``
for its subprocesses itself, under ``--output``.
"""
import argparse
import os
import shutil
import subprocess
import sys
import time
from collections import deque
from typing import List

from nnunetv2_deconver.nnunet.files import load_json, write_json_atomic
from nnunetv2_deconver.nnunet.trainer_discovery import trainers_folder
from nnunetv2_deconver.nnunet.trainer_mixins import (DEFAULT_EPOCHS, DEFAULT_ITERATIONS, EPOCHS_VARIABLE,
                                           ITERATIONS_VARIABLE)

__all__ = ["run_demo", "check_output", "DemoOutputError", "add_arguments", "DATASET_ID", "DATASET_NAME", "TRAINERS"]

DATASET_ID = 990
DATASET_NAME = f"Dataset{DATASET_ID}_DeconverDemo"
CONFIGURATION = "2d"
TRAINERS = ("nnUNetTrainer_demo", "nnUNetTrainerDeconver_demo")
PLANS = "nnUNetPlans"


class DemoError(Exception):
    pass


class DemoOutputError(ValueError):
    """``--output`` is not the demo's to write into; nothing has been written."""


STATE_FILE = "demo_state.json"


def check_output(output: str) -> None:
    """Raise DemoOutputError (one line) unless ``output`` is the demo's: missing, an empty folder, or a folder
    an earlier demo made (it holds ``demo_state.json``) with no other dataset of the demo's id in it. The demo
    deletes and rewrites what it made there (``predictions/``, ``report/``, its dataset), never a user's files."""
    if os.path.exists(output) and not os.path.isdir(output):
        raise DemoOutputError(f"--output {output} is a file; give a new or empty folder")
    if not os.path.isdir(output) or not os.listdir(output):
        return
    if not os.path.isfile(os.path.join(output, STATE_FILE)):
        raise DemoOutputError(f"--output {output} holds files and no {STATE_FILE}, so it is not a demo's folder and "
                              f"the demo would replace files in it; give a new or empty folder")
    prefix = f"Dataset{DATASET_ID:03d}_"
    for base in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results"):
        folder = os.path.join(output, base)
        others = sorted(n for n in (os.listdir(folder) if os.path.isdir(folder) else [])
                        if n.startswith(prefix) and n != DATASET_NAME)
        if others:
            raise DemoOutputError(f"{folder} holds {others[0]}, a second dataset with the demo's id {DATASET_ID} "
                                  f"that nnU-Net cannot tell from {DATASET_NAME}; move it out or give another --output")


class _Clock:
    def __init__(self):
        self.start = time.perf_counter()

    def say(self, message: str) -> None:
        elapsed = time.perf_counter() - self.start
        print(f"[demo {int(elapsed // 60):02d}:{int(elapsed % 60):02d}] {message}", flush=True)


def _environment(output: str, epochs: int, iterations: int) -> dict:
    env = dict(os.environ)
    env.update(nnUNet_raw=os.path.join(output, "nnUNet_raw"),
               nnUNet_preprocessed=os.path.join(output, "nnUNet_preprocessed"),
               nnUNet_results=os.path.join(output, "nnUNet_results"),
               nnUNet_extTrainer=trainers_folder(),
               nnUNet_def_n_proc="1", nnUNet_compile="false",
               **{EPOCHS_VARIABLE: str(epochs), ITERATIONS_VARIABLE: str(iterations)})
    # nnU-Net sizes its thread pools and workers from this; it must not be 0 for planning
    env.pop("nnUNet_n_proc_DA", None)
    return env


def _executable(name: str) -> str:
    """nnU-Net's command ``name`` from this interpreter's environment (a venv need not be activated),
    else from ``PATH``."""
    beside = os.path.join(os.path.dirname(sys.executable), name)
    return beside if os.access(beside, os.X_OK) else (shutil.which(name) or name)


def _run(command: List[str], env: dict, log_path: str, clock: _Clock, show=lambda line: False) -> None:
    """Run a command, its output to ``log_path``; lines for which ``show`` is true are printed."""
    command = [_executable(command[0])] + command[1:]
    os.makedirs(os.path.dirname(log_path), exist_ok=True)
    tail = deque(maxlen=25)
    with open(log_path, "a") as log:
        log.write(f"$ {' '.join(command)}\n")
        process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                   bufsize=1)
        for line in process.stdout:
            log.write(line)
            tail.append(line.rstrip())
            if show(line):
                clock.say("  " + line.strip().split(": ", 1)[-1])
        code = process.wait()
    if code != 0:
        raise DemoError(f"{command[0]} failed (exit {code}); last lines of {log_path}:\n" + "\n".join(tail))


def _device(requested: str) -> str:
    if requested != "auto":
        return requested
    import torch
    return "cuda" if torch.cuda.is_available() else "cpu"


def run_demo(output: str, device: str = "auto", epochs: int = DEFAULT_EPOCHS, iterations: int = DEFAULT_ITERATIONS,
             n_train: int = 9, n_test: int = 3, size: int = 128, seed: int = 0) -> dict:
    """Run (or resume) the demo under ``output``; returns the comparison summary."""
    clock = _Clock()
    output = os.path.abspath(output)
    check_output(output)
    os.makedirs(output, exist_ok=True)
    device = _device(device)
    env = _environment(output, epochs, iterations)
    logs = os.path.join(output, "logs")
    state_path = os.path.join(output, STATE_FILE)
    state = load_json(state_path) or {}
    write_json_atomic(state, state_path)  # first: this folder is the demo's from now on, also if step 1 is cut
    data_spec = {"n_train": n_train, "n_test": n_test, "size": size, "seed": seed, "dimension": 2}
    budget = {"epochs": epochs, "iterations": iterations}
    clock.say(f"output {output}, device {device}, budget {epochs} epochs x {iterations} iterations, "
              f"{n_train} training and {n_test} held-out 2D cases of {size}x{size} pixels")

    raw_dataset = os.path.join(env["nnUNet_raw"], DATASET_NAME)
    images_test, labels_test = os.path.join(raw_dataset, "imagesTs"), os.path.join(raw_dataset, "labelsTs")
    if state.get("data") != data_spec:
        clock.say("1/5 writing the synthetic dataset ...")
        # a different dataset invalidates everything derived from it
        for base in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results"):
            shutil.rmtree(os.path.join(env[base], DATASET_NAME), ignore_errors=True)
        shutil.rmtree(os.path.join(output, "predictions"), ignore_errors=True)
        state = {}
        from nnunetv2_deconver.tools.synthetic import write_dataset
        write_dataset(env["nnUNet_raw"], DATASET_NAME, n_train, n_test, (size, size), seed=seed)
        state["data"] = data_spec
        write_json_atomic(state, state_path)
    else:
        clock.say("1/5 synthetic dataset: already written")

    if not state.get("preprocessed"):
        clock.say("2/5 nnUNetv2_plan_and_preprocess ...")
        _run(["nnUNetv2_plan_and_preprocess", "-d", str(DATASET_ID), "-c", CONFIGURATION, "-np", "1",
              "-npfp", "1", "--verify_dataset_integrity"], env, os.path.join(logs, "plan_and_preprocess.log"), clock)
        state["preprocessed"] = True
        write_json_atomic(state, state_path)
    else:
        clock.say("2/5 plan and preprocess: already done")

    train_env = dict(env, nnUNet_n_proc_DA="0")  # augmentation in the main process: no worker start-up cost
    trained = state.setdefault("trained", {})
    for index, trainer in enumerate(TRAINERS, 1):
        fold_folder = os.path.join(env["nnUNet_results"], DATASET_NAME, f"{trainer}__{PLANS}__{CONFIGURATION}",
                                   "fold_0")
        if trained.get(trainer) == budget and os.path.isfile(os.path.join(fold_folder, "checkpoint_final.pth")):
            clock.say(f"3/5 training {trainer}: already done")
            continue
        if trained.get(trainer) not in (None, budget) or (trained.get(trainer) is None and
                                                          os.path.isfile(os.path.join(fold_folder,
                                                                                      "checkpoint_final.pth"))):
            shutil.rmtree(os.path.dirname(fold_folder), ignore_errors=True)  # another budget: start over
            shutil.rmtree(os.path.join(output, "predictions", trainer), ignore_errors=True)
        resume = os.path.isfile(os.path.join(fold_folder, "checkpoint_latest.pth"))
        clock.say(f"3/5 training {trainer} ({index}/{len(TRAINERS)}), fold 0"
                  + (", continuing from its last checkpoint" if resume else "") + " ...")
        trained[trainer] = None
        write_json_atomic(state, state_path)
        _run(["nnUNetv2_train", str(DATASET_ID), CONFIGURATION, "0", "-tr", trainer, "-device", device]
             + (["--c"] if resume else []), train_env, os.path.join(logs, f"train_{trainer}.log"), clock,
             show=lambda line: "Epoch time" in line or "train_loss" in line or "Pseudo dice" in line)
        trained[trainer] = budget
        write_json_atomic(state, state_path)

    predicted = state.setdefault("predicted", {})
    for trainer in TRAINERS:
        folder = os.path.join(output, "predictions", trainer)
        if predicted.get(trainer) == budget and os.path.isdir(folder):
            clock.say(f"4/5 predicting held-out cases with {trainer}: already done")
            continue
        clock.say(f"4/5 nnUNetv2_predict held-out cases with {trainer} ...")
        shutil.rmtree(folder, ignore_errors=True)
        start = time.perf_counter()
        _run(["nnUNetv2_predict", "-i", images_test, "-o", folder, "-d", str(DATASET_ID), "-c", CONFIGURATION,
              "-tr", trainer, "-f", "0", "-device", device, "-npp", "1", "-nps", "1"],
             env, os.path.join(logs, f"predict_{trainer}.log"), clock)
        predicted[trainer] = budget
        state.setdefault("predict_seconds", {})[trainer] = time.perf_counter() - start
        write_json_atomic(state, state_path)

    clock.say("5/5 comparing ...")
    from nnunetv2_deconver.tools.compare import compare
    saved = {k: os.environ.get(k) for k in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results",
                                            "nnUNet_extTrainer")}
    os.environ.update({k: env[k] for k in saved})
    try:
        summary = compare(str(DATASET_ID), CONFIGURATION, os.path.join(output, "report"), TRAINERS, (PLANS,),
                          prediction_folders=[os.path.join(output, "predictions", t) for t in TRAINERS],
                          labels_folder=labels_test, images_folder=images_test, timing_device=device)
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
    seconds = time.perf_counter() - clock.start
    summary["wall_seconds"] = seconds
    summary["predict_seconds"] = state.get("predict_seconds", {})
    return summary


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--output", default="deconver_demo",
                        help="folder for the dataset, nnU-Net's folders, logs and the report (default: %(default)s): "
                             "new or empty, or an earlier demo's, which re-running resumes")
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda", "mps"),
                        help="auto: cuda when available, else cpu")
    parser.add_argument("--epochs", type=int, default=DEFAULT_EPOCHS,
                        help="training budget: epochs per trainer (default %(default)s)")
    parser.add_argument("--iterations", type=int, default=DEFAULT_ITERATIONS,
                        help="training budget: iterations per epoch (default %(default)s)")
    parser.add_argument("--cases", type=int, default=12, help="synthetic cases, a quarter held out (default 12)")
    parser.add_argument("--size", type=int, default=128, help="edge of each synthetic 2D image in pixels (default 128)")


def run(args: argparse.Namespace) -> int:
    if args.epochs < 1 or args.iterations < 1:
        print("nnunetv2_deconver demo: error: --epochs and --iterations must be at least 1", file=sys.stderr)
        return 2
    if args.cases < 8 or args.size < 16:
        print("nnunetv2_deconver demo: error: use at least 8 cases of at least 16x16 pixels", file=sys.stderr)
        return 2
    n_test = max(2, args.cases // 4)
    try:
        summary = run_demo(args.output, args.device, args.epochs, args.iterations, args.cases - n_test, n_test,
                           args.size)
    except DemoOutputError as error:  # nothing was written: no resuming to advise
        print(f"nnunetv2_deconver demo: error: {error}", file=sys.stderr)
        return 2
    except Exception as error:  # a failed step: one message with the log's tail, no traceback
        print(f"nnunetv2_deconver demo: error: {error}", file=sys.stderr)
        print("re-run the same command to resume from the last finished step", file=sys.stderr)
        return 1
    print()
    print(summary["table"])
    print()
    print("nnUNetv2_predict wall time on the held-out cases: " +
          ", ".join(f"{t} {s:.1f} s" for t, s in summary["predict_seconds"].items()))
    print(f"demo wall time: {summary['wall_seconds'] / 60:.1f} min")
    print(f"report: {os.path.join(os.path.abspath(args.output), 'report', 'summary.md')}")
    return 0
