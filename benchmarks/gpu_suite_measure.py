"""The GPU suite's measurements (see ``gpu_suite.py``): the NDC layer paths, and the network training
step of each network in its own worker process.

A worker (``python gpu_suite_measure.py --worker NAME ...``) builds one network through its trainer's
``build_network_architecture`` from an nnU-Net plan, compiles it, runs a warm-up step, measures the peak
memory of a second step and then times one step per ``step`` line it reads on stdin, answering each with
one ``@@ {json}`` line on stdout. The workers compile in parallel; the parent (:func:`network_steps`)
then asks them for steps in turn, so the repeats interleave and only one network runs at a time. One
process per network also keeps each peak to that network's own tensors and a failure to its own row.
"""
import argparse
import contextlib
import json
import queue
import subprocess
import sys
import threading
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from _common import PeakMemory, median, synchronize, timed  # noqa: E402

PREFIX = "@@ "
INPUT_CHANNELS, NUM_CLASSES = 1, 3  # the suite's generated dataset: one image channel, background/ball/core
_STOCK = "nnunetv2.training.nnUNetTrainer.nnUNetTrainer:nnUNetTrainer"
_DECONVER = "nnunetv2_deconver.trainers.nnUNetTrainerDeconver:nnUNetTrainerDeconver"
_CHECKPOINTED = ("nnunetv2_deconver.trainers.variants.network_architecture.nnUNetTrainerDeconverCheckpointed:"
                 "nnUNetTrainerDeconverCheckpointed")
# name: (trainer "module:class", plans identifier, forced NDC path or None)
NETWORKS = {
    "PlainConvUNet": (_STOCK, "nnUNetPlans", None),
    "ResEnc M": (_STOCK, "nnUNetResEncUNetMPlans", None),
    "Deconver": (_DECONVER, "nnUNetPlans", None),
    "Deconver checkpointed": (_CHECKPOINTED, "nnUNetPlans", None),
    "Deconver triton": (_DECONVER, "nnUNetPlans", "triton"),
}


def autocast_for(device: torch.device):
    """fp16 autocast on a GPU (nnU-Net's AMP); bf16 on the CPU, where fp16 autocast is not what anyone runs."""
    dtype = torch.float16 if device.type == "cuda" else torch.bfloat16
    return lambda: torch.autocast(device.type, dtype=dtype), str(dtype).replace("torch.", "")


def triton_usable(device: torch.device) -> str:
    """'' where the fused Triton path can run, else why not."""
    import importlib.util
    if importlib.util.find_spec("triton") is None:
        return "triton is not installed"
    return "" if device.type == "cuda" else "the fused kernels need a GPU (the CPU would fall back to recompute)"


def ndc_layer(device: torch.device, size: int, channels: int, ratio: int, repeats: int, deadline) -> dict:
    """Forward and forward+backward time (medians of interleaved runs) and peak memory of one NDC layer
    (``groups = C``, 3^3 kernel, batch 1) for each path, fp32 and under autocast."""
    from ndc_layer import operands
    from nnunetv2_deconver.ops.ndc import nonnegative_deconvolution
    x, source, filters, grad = operands(channels, size, ratio, device)
    autocast, low = autocast_for(device)
    precisions = {"fp32": contextlib.nullcontext, "autocast": autocast}
    rows, cases = {}, []
    for path in ("naive", "recompute", "triton"):
        why_not = triton_usable(device) if path == "triton" else ""
        for precision in precisions:
            label = f"{path} {precision}"
            rows[label] = {"path": path, "precision": "fp32" if precision == "fp32" else f"{low} autocast"}
            if why_not:
                rows[label]["skipped"] = why_not
            else:
                cases.append((label, path, precisions[precision]))

    def forward(path, context):
        with context():
            return nonnegative_deconvolution(x, source, filters, channels, implementation=path)

    def forward_backward(path, context):
        for tensor in (x, source, filters):
            tensor.grad = None
        forward(path, context).backward(grad)

    times = {label: {"fwd": [], "fwd_bwd": []} for label, _, _ in cases}
    for label, path, context in list(cases):  # warm-up: Triton's compilation, cuDNN's choices
        try:
            forward_backward(path, context)
        except Exception as error:  # one path's failure must not lose the others
            rows[label]["error"] = f"{type(error).__name__}: {error}"
            cases.remove((label, path, context))
    for _ in range(repeats):
        if deadline.left() < 5:
            break
        for label, path, context in cases:
            with torch.no_grad():
                times[label]["fwd"].append(timed(lambda: forward(path, context), device))
            times[label]["fwd_bwd"].append(timed(lambda: forward_backward(path, context), device))
    for label, path, context in cases:
        if times[label]["fwd"]:
            with PeakMemory(device) as peak:
                forward_backward(path, context)
            rows[label].update(fwd_s=median(times[label]["fwd"]), fwd_bwd_s=median(times[label]["fwd_bwd"]),
                               runs=len(times[label]["fwd"]), peak_bytes=peak.bytes)
        else:
            rows[label]["skipped"] = "deadline"
    operand_bytes = sum(t.numel() * t.element_size() for t in (x, source, filters, grad))
    return {"settings": {"size": size, "channels": channels, "ratio": ratio, "batch": 1, "kernel": 3,
                         "device": device.type, "operand_bytes": operand_bytes,
                         "peak": "max_memory_allocated during one fwd+bwd minus what was allocated before "
                                 "(the operands)"},
            "rows": rows}


# ---------------------------------------------------------------- network step, worker side

def _class(spec: str):
    import importlib
    module, name = spec.split(":")
    return getattr(importlib.import_module(module), name)


def _say(**message) -> None:
    print(PREFIX + json.dumps(message), flush=True)


def worker(args) -> int:
    from network_step import Trainer
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager
    trainer_spec, plans_name, forced = NETWORKS[args.worker]
    device = torch.device(args.device)
    if device.type == "cpu":
        torch.set_num_threads(1)  # the workers run side by side
    patch, batch = tuple(args.patch), args.batch
    plans = json.loads(Path(args.plans_folder, f"{plans_name}.json").read_text())
    manager = PlansManager(plans)
    configuration = manager.get_configuration(args.configuration)
    with contextlib.ExitStack() as stack:
        if forced:
            from nnunetv2_deconver.ops.ndc_dispatch import force_implementation
            stack.enter_context(force_implementation(forced))
        torch.manual_seed(0)
        network = _class(trainer_spec).build_network_architecture(manager, configuration, INPUT_CHANNELS,
                                                                  NUM_CLASSES, True)
        info = {"trainer": trainer_spec.split(":")[1], "plans": plans_name, "forced_ndc": forced,
                "network_class": type(network).__name__, "plan_patch": configuration.patch_size,
                "plan_batch": configuration.batch_size, "patch": list(patch), "batch": batch,
                "parameters": sum(p.numel() for p in network.parameters()),
                "feature_map_elements": int(network.compute_conv_feature_map_size(patch))}
        start = time.perf_counter()
        trainer = Trainer(network, device, patch, batch, args.compile, INPUT_CHANNELS, NUM_CLASSES)
        trainer.step()  # compilation
        synchronize(device)
        info["first_step_s"] = time.perf_counter() - start  # with the compilation
        with PeakMemory(device) as peak:
            trainer.step()
        info["peak_step_bytes"] = peak.bytes  # over what was allocated when the step began
        if device.type == "cuda":
            info["max_memory_allocated"] = torch.cuda.max_memory_allocated(device)
            info["allocated_between_steps"] = torch.cuda.memory_allocated(device)
        _say(ready=True, **info)
        for line in sys.stdin:
            if line.strip() != "step":
                break
            _say(step_s=timed(trainer.step, device))
    return 0


# ---------------------------------------------------------------- network step, parent side

class Worker:
    """One worker process and a thread that collects its ``@@`` messages."""

    def __init__(self, name: str, command, log_path: Path):
        self.name, self.log_path, self.messages = name, log_path, queue.Queue()
        self.log = open(log_path, "w")
        self.process = subprocess.Popen(command + ["--worker", name], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                        stderr=self.log, text=True, start_new_session=True)
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self):
        for line in self.process.stdout:
            if line.startswith(PREFIX):
                self.messages.put(json.loads(line[len(PREFIX):]))
        self.messages.put(None)  # the process ended

    def receive(self, timeout: float):
        """The next message; raises RuntimeError if the worker ended or said nothing within ``timeout``."""
        try:
            message = self.messages.get(timeout=max(timeout, 0.1))
        except queue.Empty:
            raise RuntimeError(f"no answer before the deadline (waited {max(timeout, 0):.0f} s)") from None
        if message is None:
            raise RuntimeError(f"worker ended (exit {self.process.wait()}): {self.log_tail()}")
        return message

    def log_tail(self, characters: int = 1500) -> str:
        self.log.flush()
        return self.log_path.read_text(errors="replace")[-characters:].strip()

    def stop(self, ready: bool):
        """Ask a ready worker to quit; kill one that is not (it may be compiling and read nothing)."""
        if self.process.poll() is None:
            try:
                if not ready:
                    raise OSError("not ready")
                self.process.stdin.write("quit\n")
                self.process.stdin.close()
            except OSError:
                self.process.kill()

    def wait(self, timeout: float):
        try:
            self.process.wait(timeout=max(timeout, 0.1))
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self.log.close()


def network_steps(plans_folder: Path, configuration: str, patch, batch: int, device: torch.device,
                  compile_network: bool, repeats: int, names, deadline, ready_by: float, done_by: float,
                  log_folder: Path, register) -> dict:
    """Rows per network (compile + first step, peak memory, median step time of interleaved repeats). The
    workers get until ``deadline.left() == ready_by`` to be ready, the repeats until ``done_by``;
    ``register(process)`` hands each process to the suite's watchdog."""
    command = [sys.executable, __file__, "--plans-folder", str(plans_folder), "--configuration", configuration,
               "--patch", *map(str, patch), "--batch", str(batch), "--device", device.type]
    command += ["--compile"] if compile_network else []
    rows, workers = {}, {}
    if deadline.left() - ready_by < 10:
        return {name: {"skipped": "deadline"} for name in names}
    for name in names:
        why_not = triton_usable(device) if NETWORKS[name][2] == "triton" else ""
        if why_not and device.type == "cuda" or "not installed" in why_not:
            rows[name] = {"skipped": why_not}
            continue
        workers[name] = Worker(name, command, log_folder / f"worker_{name.replace(' ', '_')}.log")
        register(workers[name].process)
    try:
        for name, w in workers.items():
            try:
                rows[name] = dict(w.receive(deadline.left() - ready_by), step_s_runs=[])
                if NETWORKS[name][2] == "triton" and device.type != "cuda":
                    rows[name]["note"] = "on the CPU the forced triton path falls back to recompute"
            except RuntimeError as error:
                rows[name] = {"error": str(error)}
        live = [n for n in workers if "error" not in rows[n]]
        for _ in range(repeats):
            if deadline.left() < done_by:
                break
            for name in list(live):
                try:
                    workers[name].process.stdin.write("step\n")
                    workers[name].process.stdin.flush()
                    rows[name]["step_s_runs"].append(workers[name].receive(deadline.left() - done_by)["step_s"])
                except (RuntimeError, OSError) as error:
                    rows[name]["error"] = f"during the repeats: {error}"
                    live.remove(name)
        for name in workers:
            runs = rows[name].get("step_s_runs")
            if runs:
                rows[name]["step_s"] = median(runs)
    finally:
        for name, w in workers.items():
            w.stop(ready="ready" in rows.get(name, {}))
        end = time.monotonic() + 15
        for w in workers.values():
            w.wait(end - time.monotonic())
    return rows


def memory_model_rows(step_rows: dict) -> dict:
    """The planner's memory model (``estimate_training_bytes``) against each Deconver row's measured peak."""
    from nnunetv2_deconver.nnunet import memory_model
    rows = {}
    for name, row in step_rows.items():
        if not name.startswith("Deconver") or "feature_map_elements" not in row:
            continue
        predicted = memory_model.estimate_training_bytes(row["feature_map_elements"], row["parameters"], row["batch"])
        allocated = predicted - memory_model.WORKSPACE_BYTES  # the margin covers what the allocator does not count
        measured = row.get("max_memory_allocated")
        rows[name] = {"predicted_bytes": predicted, "predicted_without_workspace_bytes": allocated,
                      "bytes_per_feature_element": memory_model.ACTIVATION_BYTES_PER_FEATURE_ELEMENT,
                      "measured_max_memory_allocated": measured,
                      "measured_over_predicted_without_workspace": measured / allocated if measured else None}
    return rows


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description="one network-step worker of gpu_suite.py")
    parser.add_argument("--worker", required=True, choices=list(NETWORKS))
    parser.add_argument("--plans-folder", required=True)
    parser.add_argument("--configuration", default="3d_fullres")
    parser.add_argument("--patch", type=int, nargs="+", required=True)
    parser.add_argument("--batch", type=int, required=True)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--compile", action="store_true")
    return worker(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
