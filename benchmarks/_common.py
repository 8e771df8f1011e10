"""Timing and memory helpers shared by the benchmark scripts (median timings, peak memory, machine info)."""
import os
import platform
import statistics
import subprocess
import time
from typing import Callable, Dict, List

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


def _status_kib(field: str) -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return 0


class PeakMemory:
    """Peak memory of a block: ``torch.cuda.max_memory_allocated`` on a GPU, else the peak resident set.

    On the CPU the kernel's high-water mark (VmHWM) is reset through ``/proc/self/clear_refs`` first,
    so the figure is the block's own peak RSS, minus the RSS on entry (bytes the block added).
    """

    def __init__(self, device: torch.device):
        self.device, self.bytes = device, 0

    def __enter__(self):
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self.base = torch.cuda.memory_allocated(self.device)
        else:
            try:
                with open("/proc/self/clear_refs", "w") as refs:
                    refs.write("5")
            except OSError:
                pass
            self.base = _status_kib("VmRSS") * 1024
        return self

    def __exit__(self, *exc):
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            self.bytes = torch.cuda.max_memory_allocated(self.device) - self.base
        else:
            self.bytes = _status_kib("VmHWM") * 1024 - self.base
        return False


def saved_tensor_bytes(fn: Callable[[], torch.Tensor], exclude=()) -> int:
    """Bytes of distinct storages autograd saves for backward while ``fn`` runs, those of ``exclude``
    (parameters, which are not activations) left out."""
    storages: Dict[int, int] = {}
    skip = {tensor.untyped_storage().data_ptr() for tensor in exclude}

    def pack(tensor):
        storage = tensor.untyped_storage()
        if storage.data_ptr() not in skip:
            storages[storage.data_ptr()] = storage.nbytes()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        fn()
    return sum(storages.values())


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
