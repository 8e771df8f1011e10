"""What each run costs: parameters and FLOPs/voxel of the network its trainer builds from its plans,
seconds per training epoch and peak GPU memory from nnU-Net's training logs, and one timed forward pass
over a patch. Each trainer is found as ``nnUNetv2_train`` finds it: among nnU-Net's own, then in the
trainer folders given (those of ``nnUNet_extTrainer``)."""
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
from nnunetv2_deconver.tools.compare.records import Run, RunCost, TrainingLogCosts

__all__ = ["measure_run_cost", "training_log_costs"]


def _find_trainer(name: str, trainer_folders: Sequence[str]):
    """nnU-Net's ``recursive_find_trainer_class_by_name`` with the external folders as an argument."""
    import nnunetv2
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
    from nnunetv2.utilities.find_class_by_name import recursive_find_python_class
    own = os.path.join(nnunetv2.__path__[0], "training", "nnUNetTrainer")
    found = recursive_find_python_class(own, name, "nnunetv2.training.nnUNetTrainer", nnunetv2.__path__[0])
    for folder in trainer_folders:
        if found is None and os.path.exists(folder):
            found = recursive_find_python_class(folder, name, None, base_folder=folder, verbose=True,
                                                cleanup_imports_from_base_folder=True)
    if found is None:
        raise RuntimeError(f"Could not find requested nnunet trainer {name} in nnunetv2.training.nnUNetTrainer "
                           f"({own}) nor in nnUNet_extTrainer={os.pathsep.join(trainer_folders)}")
    if not issubclass(found, nnUNetTrainer):
        raise TypeError(f"{name} is not an nnU-Net trainer (a subclass of nnUNetTrainer)")
    return found


def _trainer_class(name: str, trainer_folders: Sequence[str]):
    # importing every trainer module prints the search and deprecation warnings of nnU-Net's imports,
    # which would bury the report's progress lines
    with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        return _find_trainer(name, trainer_folders)


def _build_network(run: Run, configuration: str, device, trainer_folders: Sequence[str]):
    import torch
    from nnunetv2.utilities.label_handling.label_handling import determine_num_input_channels
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager
    trainer = _trainer_class(run.trainer, trainer_folders)
    plans_manager = PlansManager(run.plans_json)
    configuration_manager = plans_manager.get_configuration(configuration)
    label_manager = plans_manager.get_label_manager(run.dataset_json)
    channels = determine_num_input_channels(plans_manager, configuration_manager, run.dataset_json)
    with torch.device(device):
        network = trainer.build_network_architecture(plans_manager, configuration_manager, channels,
                                                     label_manager.num_segmentation_heads,
                                                     enable_deep_supervision=False)
    return network, channels, tuple(configuration_manager.patch_size)


def measure_run_cost(run: Run, configuration: str, timing_device: Optional[str],
                     trainer_folders: Sequence[str]) -> RunCost:
    """Parameters, FLOPs/voxel (all convolutions, and without the NDC update's as the paper counted),
    seconds per training epoch and peak GPU memory from nnU-Net's logs, and one forward pass over a patch."""
    from nnunetv2_deconver.network.costs import measure_cost
    cost = RunCost()
    if run.plans_json is not None:
        try:
            network, channels, patch = _build_network(run, configuration, "meta", trainer_folders)
            counted = measure_cost(network, channels, patch)
            cost.parameters, cost.flops_per_voxel = counted.parameters, counted.flops_per_voxel
            cost.paper_style_flops_per_voxel, cost.patch_size = counted.paper_style_flops_per_voxel, patch
            if timing_device:
                cost.forward_seconds = _time_forward(run, configuration, timing_device, trainer_folders)
        except Exception as error:  # a cost we cannot count is reported as missing, not fatal
            cost.notes.append(f"network not built ({type(error).__name__}: {str(error)[:150]})")
    else:
        cost.notes.append("no plans.json: parameters and FLOPs unknown")
    if run.results_folder:
        cost.training = training_log_costs(
            sorted(glob.glob(os.path.join(run.results_folder, "fold_*", "training_log_*.txt"))))
    return cost


def training_log_costs(logs: Sequence[str]) -> TrainingLogCosts:
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
    return TrainingLogCosts(float(np.mean(epoch_times)) if epoch_times else None, epochs or None,
                            max(peaks) if peaks else None)


def _time_forward(run: Run, configuration: str, device: str, trainer_folders: Sequence[str],
                  repeats: int = 3) -> float:
    """Median seconds of one forward pass at batch 1 over the plan's patch (what sliding-window
    inference runs once per window), with random weights, after one warm-up pass."""
    import torch
    network, channels, patch = _build_network(run, configuration, "cpu", trainer_folders)
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
