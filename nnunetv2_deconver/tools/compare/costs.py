"""What each run costs: parameters and FLOPs/voxel of the network its trainer builds from its plans,
seconds per training epoch and peak GPU memory from nnU-Net's training logs, and one timed forward pass
over a patch."""
import contextlib
import glob
import io
import os
import re
import time
import warnings
from typing import Optional, Sequence

import numpy as np

from nnunetv2_deconver.nnunet.trainer_mixins import PEAK_MEMORY_LOG_PREFIX
from nnunetv2_deconver.tools.compare.runs import Run

__all__ = ["measure_run_cost", "training_log_costs"]


def _trainer_class(name: str):
    from nnunetv2.utilities.find_objects import recursive_find_trainer_class_by_name
    # importing every trainer module prints the search and deprecation warnings of nnU-Net's imports,
    # which would bury the report's progress lines
    with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        return recursive_find_trainer_class_by_name(name)


def _build_network(run: Run, configuration: str, device):
    import torch
    from nnunetv2.utilities.label_handling.label_handling import determine_num_input_channels
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager
    trainer = _trainer_class(run.trainer)
    plans_manager = PlansManager(run.plans_json)
    configuration_manager = plans_manager.get_configuration(configuration)
    label_manager = plans_manager.get_label_manager(run.dataset_json)
    channels = determine_num_input_channels(plans_manager, configuration_manager, run.dataset_json)
    with torch.device(device):
        network = trainer.build_network_architecture(plans_manager, configuration_manager, channels,
                                                     label_manager.num_segmentation_heads,
                                                     enable_deep_supervision=False)
    return network, channels, tuple(configuration_manager.patch_size)


def measure_run_cost(run: Run, configuration: str, timing_device: Optional[str]) -> dict:
    """Parameters, FLOPs/voxel (all convolutions, and without the NDC update's as the paper counted),
    seconds per training epoch and peak GPU memory from nnU-Net's logs, and one forward pass over a patch."""
    from nnunetv2_deconver.network.costs import measure_cost
    cost = {"parameters": None, "flops_per_voxel": None, "paper_style_flops_per_voxel": None,
            "epoch_seconds": None, "epochs": None, "peak_gpu_mib": None, "forward_seconds": None, "patch_size": None,
            "notes": []}
    if run.plans_json is not None:
        try:
            network, channels, patch = _build_network(run, configuration, "meta")
            counted = measure_cost(network, channels, patch)
            cost.update(parameters=counted.parameters, flops_per_voxel=counted.flops_per_voxel,
                        paper_style_flops_per_voxel=counted.paper_style_flops_per_voxel, patch_size=patch)
            if timing_device:
                cost["forward_seconds"] = _time_forward(run, configuration, timing_device)
        except Exception as error:  # a cost we cannot count is reported as missing, not fatal
            cost["notes"].append(f"network not built ({type(error).__name__}: {str(error)[:150]})")
    else:
        cost["notes"].append("no plans.json: parameters and FLOPs unknown")
    if run.results_folder:
        cost.update(training_log_costs(
            sorted(glob.glob(os.path.join(run.results_folder, "fold_*", "training_log_*.txt")))))
    return cost


def training_log_costs(logs: Sequence[str]) -> dict:
    """From nnU-Net's training logs: ``epoch_seconds``, the mean of the ``Epoch time: X s`` lines over all
    logs; ``epochs``, the most epochs one log holds; ``peak_gpu_mib``, the largest ``Peak GPU memory: X MiB``
    line (written by :class:`~nnunetv2_deconver.nnunet.trainer_mixins.PeakGPUMemoryLog`). Each is None
    where no log has such a line."""
    epoch_times, epochs, peaks = [], 0, []
    for log in logs:
        with open(log, errors="replace") as f:  # a log is free text; a stray byte is no reason to stop
            text = f.read()
        times = [float(t) for t in re.findall(r"Epoch time: ([0-9.]+) s", text)]
        epoch_times += times
        epochs = max(epochs, len(times))
        peaks += [float(m) for m in re.findall(re.escape(PEAK_MEMORY_LOG_PREFIX) + r" ([0-9.]+) MiB", text)]
    return {"epoch_seconds": float(np.mean(epoch_times)) if epoch_times else None,
            "epochs": epochs or None, "peak_gpu_mib": max(peaks) if peaks else None}


def _time_forward(run: Run, configuration: str, device: str, repeats: int = 3) -> float:
    """Median seconds of one forward pass at batch 1 over the plan's patch (what sliding-window
    inference runs once per window), with random weights, after one warm-up pass."""
    import torch
    network, channels, patch = _build_network(run, configuration, "cpu")
    network = network.to(device).eval()
    x = torch.randn(1, channels, *patch, device=device)
    times = []
    with torch.no_grad():
        for i in range(repeats + 1):
            if device.startswith("cuda"):
                torch.cuda.synchronize()
            start = time.perf_counter()
            network(x)
            if device.startswith("cuda"):
                torch.cuda.synchronize()
            if i:
                times.append(time.perf_counter() - start)
    return float(np.median(times))


# ---------------------------------------------------------------------------------------------- statistics
