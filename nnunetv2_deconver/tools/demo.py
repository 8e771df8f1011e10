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
for its subprocesses itself, under ``--output``, and gives the comparison the same folders; its own
process's environment is left as it is.
"""
import argparse
import os
import shutil
import subprocess
import sys
import time
from collections import deque
from dataclasses import dataclass
from typing import Dict, List

from nnunetv2_deconver.nnunet.files import load_json, write_json_atomic
from nnunetv2_deconver.nnunet.trainer_discovery import trainers_folder
from nnunetv2_deconver.nnunet.trainer_mixins import (DEFAULT_EPOCHS, DEFAULT_ITERATIONS, EPOCHS_VARIABLE,
                                                     ITERATIONS_VARIABLE)
from nnunetv2_deconver.tools.compare.records import Comparison, NnunetFolders
from nnunetv2_deconver.tools.compare.report import render_table

__all__ = ["run_demo", "DemoResult", "check_output", "DemoOutputError", "add_arguments", "DATASET_ID",
           "DATASET_NAME", "TRAINERS"]

DATASET_ID = 990
DATASET_NAME = f"Dataset{DATASET_ID}_DeconverDemo"
CONFIGURATION = "2d"
TRAINERS = ("nnUNetTrainer_demo", "nnUNetTrainerDeconver_demo")
PLANS = "nnUNetPlans"
# the smallest dataset the demo accepts (cases, image edge in pixels), and the fewest cases it holds out
MIN_CASES, MIN_SIZE, MIN_HELD_OUT = 8, 16, 2


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


@dataclass
class DemoResult:
    """What the demo prints: the comparison, each trainer's prediction time and the demo's wall time."""
    comparison: Comparison
    predict_seconds: Dict[str, float]  # trainer -> seconds of nnUNetv2_predict on the held-out cases
    wall_seconds: float


@dataclass
class _Demo:
    """One demo folder: where things go, the budget, the nnU-Net environment of the subprocesses, and the
    state that records each finished step (``demo_state.json``)."""
    output: str
    device: str
    budget: dict  # {"epochs": E, "iterations": I}, as the state records it
    env: dict
    state: dict
    clock: _Clock

    def path(self, *parts: str) -> str:
        return os.path.join(self.output, *parts)

    def nnunet(self, base: str, *parts: str) -> str:
        """``base`` (nnUNet_raw, nnUNet_preprocessed or nnUNet_results) of the demo's dataset."""
        return os.path.join(self.env[base], DATASET_NAME, *parts)

    def save(self) -> None:
        write_json_atomic(self.state, self.path(STATE_FILE))


def run_demo(output: str, device: str = "auto", epochs: int = DEFAULT_EPOCHS, iterations: int = DEFAULT_ITERATIONS,
             n_train: int = 9, n_test: int = 3, size: int = 128, seed: int = 0) -> DemoResult:
    """Run (or resume) the demo under ``output``; returns the comparison and the times."""
    clock = _Clock()
    output = os.path.abspath(output)
    check_output(output)
    os.makedirs(output, exist_ok=True)
    device = _device(device)
    demo = _Demo(output, device, {"epochs": epochs, "iterations": iterations},
                 _environment(output, epochs, iterations), load_json(os.path.join(output, STATE_FILE)) or {}, clock)
    demo.save()  # first: this folder is the demo's from now on, also if step 1 is cut
    clock.say(f"output {output}, device {device}, budget {epochs} epochs x {iterations} iterations, "
              f"{n_train} training and {n_test} held-out 2D cases of {size}x{size} pixels")
    _write_data(demo, {"n_train": n_train, "n_test": n_test, "size": size, "seed": seed, "dimension": 2})
    _plan_and_preprocess(demo)
    for index, trainer in enumerate(TRAINERS, 1):
        _train(demo, index, trainer)
    for trainer in TRAINERS:
        _predict(demo, trainer)
    comparison = _compare(demo)
    return DemoResult(comparison, demo.state.get("predict_seconds", {}), time.perf_counter() - clock.start)


def _write_data(demo: _Demo, data_spec: dict) -> None:
    """Step 1: the synthetic dataset; a different one invalidates everything derived from it."""
    if demo.state.get("data") == data_spec:
        demo.clock.say("1/5 synthetic dataset: already written")
        return
    demo.clock.say("1/5 writing the synthetic dataset ...")
    for base in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results"):
        shutil.rmtree(demo.nnunet(base), ignore_errors=True)
    shutil.rmtree(demo.path("predictions"), ignore_errors=True)
    demo.state.clear()
    from nnunetv2_deconver.tools.synthetic import write_dataset
    write_dataset(demo.env["nnUNet_raw"], DATASET_NAME, data_spec["n_train"], data_spec["n_test"],
                  (data_spec["size"], data_spec["size"]), seed=data_spec["seed"])
    demo.state["data"] = data_spec
    demo.save()


def _plan_and_preprocess(demo: _Demo) -> None:
    """Step 2: nnU-Net's planning and preprocessing of the 2d configuration."""
    if demo.state.get("preprocessed"):
        demo.clock.say("2/5 plan and preprocess: already done")
        return
    demo.clock.say("2/5 nnUNetv2_plan_and_preprocess ...")
    _run(["nnUNetv2_plan_and_preprocess", "-d", str(DATASET_ID), "-c", CONFIGURATION, "-np", "1",
          "-npfp", "1", "--verify_dataset_integrity"], demo.env, demo.path("logs", "plan_and_preprocess.log"),
         demo.clock)
    demo.state["preprocessed"] = True
    demo.save()


def _another_model(recorded, budget: dict, finished: bool) -> bool:
    """Whether the trainer's folder holds a model the demo must not continue: one of another budget, or a
    finished one the state does not know (the state records None while a training runs)."""
    return recorded not in (None, budget) or (recorded is None and finished)


def _train(demo: _Demo, index: int, trainer: str) -> None:
    """Step 3: fold 0 of ``trainer`` at the budget, continued from its last checkpoint if interrupted."""
    fold_folder = demo.nnunet("nnUNet_results", f"{trainer}__{PLANS}__{CONFIGURATION}", "fold_0")
    trained = demo.state.setdefault("trained", {})
    finished = os.path.isfile(os.path.join(fold_folder, "checkpoint_final.pth"))
    if trained.get(trainer) == demo.budget and finished:
        demo.clock.say(f"3/5 training {trainer}: already done")
        return
    if _another_model(trained.get(trainer), demo.budget, finished):
        shutil.rmtree(os.path.dirname(fold_folder), ignore_errors=True)  # start over
        shutil.rmtree(demo.path("predictions", trainer), ignore_errors=True)
    resume = os.path.isfile(os.path.join(fold_folder, "checkpoint_latest.pth"))
    demo.clock.say(f"3/5 training {trainer} ({index}/{len(TRAINERS)}), fold 0"
                   + (", continuing from its last checkpoint" if resume else "") + " ...")
    trained[trainer] = None
    demo.save()
    train_env = dict(demo.env, nnUNet_n_proc_DA="0")  # augmentation in the main process: no worker start-up cost
    _run(["nnUNetv2_train", str(DATASET_ID), CONFIGURATION, "0", "-tr", trainer, "-device", demo.device]
         + (["--c"] if resume else []), train_env, demo.path("logs", f"train_{trainer}.log"), demo.clock,
         show=lambda line: "Epoch time" in line or "train_loss" in line or "Pseudo dice" in line)
    trained[trainer] = demo.budget
    demo.save()


def _predict(demo: _Demo, trainer: str) -> None:
    """Step 4: ``trainer``'s predictions of the held-out cases, timed."""
    folder = demo.path("predictions", trainer)
    predicted = demo.state.setdefault("predicted", {})
    if predicted.get(trainer) == demo.budget and os.path.isdir(folder):
        demo.clock.say(f"4/5 predicting held-out cases with {trainer}: already done")
        return
    demo.clock.say(f"4/5 nnUNetv2_predict held-out cases with {trainer} ...")
    shutil.rmtree(folder, ignore_errors=True)
    start = time.perf_counter()
    _run(["nnUNetv2_predict", "-i", demo.nnunet("nnUNet_raw", "imagesTs"), "-o", folder, "-d", str(DATASET_ID),
          "-c", CONFIGURATION, "-tr", trainer, "-f", "0", "-device", demo.device, "-npp", "1", "-nps", "1"],
         demo.env, demo.path("logs", f"predict_{trainer}.log"), demo.clock)
    predicted[trainer] = demo.budget
    demo.state.setdefault("predict_seconds", {})[trainer] = time.perf_counter() - start
    demo.save()


def _compare(demo: _Demo) -> Comparison:
    """Step 5: the comparison of the predictions against the held-out labels, with the demo's folders."""
    demo.clock.say("5/5 comparing ...")
    from nnunetv2_deconver.tools.compare import compare
    return compare(str(DATASET_ID), CONFIGURATION, demo.path("report"), TRAINERS, (PLANS,),
                   prediction_folders=[demo.path("predictions", t) for t in TRAINERS],
                   labels_folder=demo.nnunet("nnUNet_raw", "labelsTs"),
                   images_folder=demo.nnunet("nnUNet_raw", "imagesTs"), timing_device=demo.device,
                   folders=NnunetFolders.from_environment(demo.env))


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
    if args.cases < MIN_CASES or args.size < MIN_SIZE:
        print(f"nnunetv2_deconver demo: error: use at least {MIN_CASES} cases of at least {MIN_SIZE}x{MIN_SIZE} "
              f"pixels", file=sys.stderr)
        return 2
    n_test = max(MIN_HELD_OUT, args.cases // 4)
    try:
        result = run_demo(args.output, args.device, args.epochs, args.iterations, args.cases - n_test, n_test,
                          args.size)
    except DemoOutputError as error:  # nothing was written: no resuming to advise
        print(f"nnunetv2_deconver demo: error: {error}", file=sys.stderr)
        return 2
    except Exception as error:  # a failed step: one message with the log's tail, no traceback
        print(f"nnunetv2_deconver demo: error: {error}", file=sys.stderr)
        print("re-run the same command to resume from the last finished step", file=sys.stderr)
        return 1
    print()
    print(render_table(result.comparison))
    print()
    print("nnUNetv2_predict wall time on the held-out cases: " +
          ", ".join(f"{t} {s:.1f} s" for t, s in result.predict_seconds.items()))
    print(f"demo wall time: {result.wall_seconds / 60:.1f} min")
    print(f"report: {os.path.join(os.path.abspath(args.output), 'report', 'summary.md')}")
    return 0
