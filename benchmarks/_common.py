"""Timing and memory helpers shared by the benchmark scripts (median timings, peak memory, machine info)."""
import json
import os
import platform
import statistics
import subprocess
import tempfile
import time
import warnings
from typing import Callable, Dict, List, Tuple

import torch


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], object], device: torch.device) -> float:
    """Seconds one call of ``fn`` takes, the device synchronised on both ends."""
    synchronize(device)
    start = time.perf_counter()
    fn()
    synchronize(device)
    return time.perf_counter() - start


def median(values: List[float]) -> float:
    return statistics.median(values)


class PeakMemory:
    """Peak memory a block allocates: ``torch.cuda.max_memory_allocated`` on a GPU; on the CPU the same
    quantity from the profiler's memory timeline (the peak of live tensor bytes), since the CPU allocator
    keeps no statistics and the resident set also counts pages glibc keeps after a free.

    Both are the peak minus what was allocated on entry: the bytes the block itself added at its peak.
    ``categories`` (CPU only) splits the peak by the profiler's categories (activations, gradients, ...).
    """

    def __init__(self, device: torch.device):
        self.device, self.bytes, self.categories = device, 0, {}

    def __enter__(self):
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self.base = torch.cuda.memory_allocated(self.device)
        else:
            self.profiler = torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU],
                                                   profile_memory=True, record_shapes=True, with_stack=True)
            self.profiler.__enter__()
        return self

    def __exit__(self, *exc):
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            self.bytes = torch.cuda.max_memory_allocated(self.device) - self.base
            return False
        self.profiler.__exit__(*exc)
        if exc[0] is None:
            self.bytes, self.categories = _timeline_peak(self.profiler)
        return False


def _timeline_peak(profiler) -> Tuple[int, Dict[str, int]]:
    """Peak of the profiler's CPU memory timeline over its start, and the split of that peak by category."""
    with tempfile.TemporaryDirectory() as folder, warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # the timeline export is deprecated in favour of CUDA tools
        path = os.path.join(folder, "timeline.json")
        profiler.export_memory_timeline(path, device="cpu")
        with open(path) as f:
            _, sizes = json.load(f)
    totals = [sum(row) for row in sizes]
    peak = max(range(len(totals)), key=totals.__getitem__)
    from torch.profiler._memory_profiler import _CATEGORY_TO_INDEX
    names = {index + 1: ("unknown" if category is None else category.name.lower())
             for category, index in _CATEGORY_TO_INDEX.items()}
    categories = {names[i]: int(v) for i, v in enumerate(sizes[peak]) if i in names and v}
    return int(totals[peak] - totals[0]), categories


def machine_description(device: torch.device) -> str:
    cpu = platform.processor() or platform.machine()
    try:
        lscpu = subprocess.run(["lscpu"], capture_output=True, text=True, check=False).stdout
        cpu = next((line.split(":", 1)[1].strip() for line in lscpu.splitlines() if line.startswith("Model name")), cpu)
    except OSError:
        pass
    text = (f"CPU: {cpu}, {os.cpu_count()} logical cores visible, torch {torch.__version__} "
            f"({torch.get_num_threads()} intra-op threads), Python {platform.python_version()}")
    if device.type == "cuda":
        text += f"; GPU: {torch.cuda.get_device_name(device)}, CUDA {torch.version.cuda}"
    return text


def mib(nbytes: float) -> str:
    return f"{nbytes / 2 ** 20:.1f}"
