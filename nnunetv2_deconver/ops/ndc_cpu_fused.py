"""The NDC update at inference on the CPU as one fused kernel (``ndc_cpu_kernel.c``), built on first use.

oneDNN runs the update's grouped and depthwise convolutions memory-bound: composed of library calls, the
update writes and reads back five R*C-channel maps (``A(x)``, the depthwise terms of ``K(S)``, ``A(K(S))``,
two elementwise products). The kernel reads the source once and writes the output once, with ``A(x)``
and ``A(K(S))`` only in registers (docs/performance.md, CPU inference). It covers the paper's setting, one
observed channel per group (G = C), fp32, 2D and 3D maps, every odd kernel and ratio, any number of
updates; :func:`fused_update_applies` says when.

The C source is compiled once per machine with the system's C compiler (``$CC``, else ``cc``) into
``$XDG_CACHE_HOME/nnunetv2_deconver`` (``~/.cache`` by default), keyed by the source, the flags and the
CPU, written under a temporary name and renamed, so concurrent processes never load a half-written
library. Where no compiler is found or the build fails, :func:`fused_kernel` returns None once (with a
warning) and the blocks run the composition of library calls, which gives the same values. Setting
``NNUNET_DECONVER_FUSED_CPU=0`` turns the kernel off. The kernel runs on ``torch.get_num_threads()``
threads, each over a range of rows (ctypes releases the GIL).
"""
import ctypes
import hashlib
import math
import os
import platform
import shutil
import subprocess
import tempfile
import threading
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Optional

import torch

from nnunetv2_deconver.ops.by_dimension import CHANNELS_LAST

__all__ = ["fused_kernel", "fused_update_applies", "fused_update", "ratio_major"]

_SOURCE = Path(__file__).with_name("ndc_cpu_kernel.c")
_FLAGS = ["-O3", "-march=native", "-ffp-contract=fast", "-fPIC", "-shared", "-std=c99"]
_KERNEL_ROWS = 64  # the most kernel rows (kd * kh) the kernel takes
_lock = threading.Lock()
_state = {}


def _cpu_identity() -> str:
    """What ``-march=native`` compiles for: the CPU's model and flags where the OS says them."""
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
        return "\n".join(sorted({line for line in lines if line.startswith(("model name", "flags"))}))
    except OSError:
        return platform.processor() or platform.machine()


def _build() -> Optional[ctypes.CDLL]:
    compiler = shutil.which(os.environ.get("CC", "cc"))
    if compiler is None:
        raise RuntimeError("no C compiler found (set CC)")
    source = _SOURCE.read_bytes()
    version = subprocess.run([compiler, "--version"], capture_output=True, text=True).stdout
    key = hashlib.sha256(b"\0".join([source, " ".join(_FLAGS).encode(), version.encode(),
                                     _cpu_identity().encode()])).hexdigest()[:16]
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "nnunetv2_deconver"
    library = cache / f"ndc_cpu_{key}.so"
    if not library.exists():
        cache.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=cache) as scratch:
            built = Path(scratch) / library.name
            result = subprocess.run([compiler, *_FLAGS, str(_SOURCE), "-o", str(built)], capture_output=True,
                                    text=True)
            if result.returncode:
                raise RuntimeError(f"{compiler} failed: {result.stderr.strip()[-500:]}")
            os.replace(built, library)
    lib = ctypes.CDLL(str(library))
    pointer, i64 = ctypes.c_void_p, ctypes.c_int64
    lib.ndc_correlate.argtypes = [pointer, pointer, pointer, pointer, i64, i64]
    lib.ndc_update.argtypes = [pointer, pointer, pointer, pointer, pointer, ctypes.c_float, pointer, i64, i64]
    lib.ndc_correlate.restype = lib.ndc_update.restype = ctypes.c_int
    return lib


def fused_kernel() -> Optional[ctypes.CDLL]:
    """The compiled kernel library, or None where it is turned off or cannot be built (warned once)."""
    if os.environ.get("NNUNET_DECONVER_FUSED_CPU", "1") == "0":
        return None
    with _lock:
        if "lib" not in _state:
            try:
                _state["lib"] = _build()
            except (OSError, RuntimeError, subprocess.SubprocessError) as error:
                warnings.warn(f"the fused CPU NDC kernel is unavailable ({error}); the NDC runs as library "
                              f"convolutions, with the same values, slower")
                _state["lib"] = None
        return _state["lib"]


def fused_update_applies(observed: torch.Tensor, filters: torch.Tensor, groups: int) -> bool:
    """Whether :func:`fused_update` computes the update of ``observed``: an fp32 CPU map with 2 or 3 spatial
    axes, one observed channel per group, at most 64 kernel rows, no gradient recorded, the kernel available."""
    dim = observed.dim() - 2
    return (dim in (2, 3) and observed.device.type == "cpu" and groups == observed.shape[1]
            and observed.dtype == filters.dtype == torch.float32 and math.prod(filters.shape[2:-1]) <= _KERNEL_ROWS
            and not torch.is_grad_enabled() and fused_kernel() is not None)


def ratio_major(tensor: torch.Tensor, channels: int, dim: int = 0) -> torch.Tensor:
    """``tensor`` with its axis ``dim`` of R * C sources reordered from the layer's order (source ``c * R + r``
    of observed channel ``c``) to the kernel's (``r * C + c``): a permutation, so exact."""
    shape = list(tensor.shape)
    split = shape[:dim] + [channels, shape[dim] // channels] + shape[dim + 1:]
    return tensor.reshape(split).transpose(dim, dim + 1).reshape(shape)


def _weights(filters: torch.Tensor, flipped: bool) -> torch.Tensor:
    """``V`` (C, R, *kernel) as the kernel's [tap][r * C + c] table; ``flipped``: the adjoint's."""
    if flipped:
        filters = filters.flip(tuple(range(2, filters.dim())))
    return filters.reshape(*filters.shape[:2], -1).permute(2, 1, 0).reshape(-1, filters.shape[0] * filters.shape[1])\
        .contiguous()


def _pool(threads: int) -> ThreadPoolExecutor:
    if _state.get("threads") != threads:
        if "pool" in _state:
            _state["pool"].shutdown()
        _state["pool"], _state["threads"] = ThreadPoolExecutor(threads, thread_name_prefix="ndc"), threads
    return _state["pool"]


def _run_rows(function, rows: int, *arguments) -> None:
    """``function(*arguments, r0, r1)`` over ``[0, rows)`` split into one contiguous range per thread."""
    threads = max(1, min(torch.get_num_threads(), rows))
    bounds = [rows * i // threads for i in range(threads + 1)]
    if threads == 1:
        failed = [function(*arguments, 0, rows)]
    else:
        with _lock:
            pool = _pool(threads)
        failed = list(pool.map(lambda i: function(*arguments, bounds[i], bounds[i + 1]), range(threads)))
    if any(failed):
        raise ValueError("the fused CPU NDC kernel takes at most 64 kernel rows (kd * kh)")


def fused_update(observed: torch.Tensor, source: torch.Tensor, filters: torch.Tensor, eps: float,
                 iterations: int) -> torch.Tensor:
    """``S^(iterations)`` of eqs. (3, 7) for G = C (see :func:`fused_update_applies`), channels-last, with the
    sources of ``source`` and of the result in ratio-major order (:func:`ratio_major`)."""
    lib = fused_kernel()
    dim = observed.dim() - 2
    observed, source = (t.contiguous(memory_format=CHANNELS_LAST[dim]) for t in (observed, source))
    batch, channels, *spatial = observed.shape
    kernel = list(filters.shape[2:])
    if dim == 2:
        spatial, kernel = [1, *spatial], [1, *kernel]
    dims = torch.tensor([batch, *spatial, channels, filters.shape[1], *kernel], dtype=torch.int64)
    rows = batch * spatial[0] * spatial[1]
    forward, adjoint = _weights(filters, False), _weights(filters, True)
    reconstruction = torch.empty_like(observed)
    for _ in range(iterations):
        _run_rows(lib.ndc_correlate, rows, source.data_ptr(), forward.data_ptr(), reconstruction.data_ptr(),
                  dims.data_ptr())
        output = torch.empty_like(source)
        _run_rows(lib.ndc_update, rows, observed.data_ptr(), reconstruction.data_ptr(), source.data_ptr(),
                  adjoint.data_ptr(), output.data_ptr(), ctypes.c_float(eps), dims.data_ptr())
        source = output
    return source
