"""The NDC update through fused Triton kernels (``implementation="triton"``), a custom op for ``torch.compile``.

Passes per update (kernels in :mod:`nnunetv2_deconver.ops.ndc_triton_kernels`; C observed channels,
E = R*C sources, one group per observed channel)::

    forward   F1  R_t = K(S_t)                               reads S_t (E)        writes R_t (C)
              F2  S_{t+1} = S_t (A(X)+eps) / (A(R_t)+eps)    reads X, R_t (C), S_t writes S_{t+1} (E)
    backward  B1  u, dL/dD_t, g*q, dL/dN += u, filter taps   reads X, R_t, S_t, g writes 3 x E
              B2  dL/dR_t = K(dL/dD_t)                       reads E              writes C
              B3  dL/dS_t = g*q + A(dL/dR_t), filter taps    reads C, 2 x E       writes E
              then dL/dX = K(dL/dN)                          reads E              writes C

``A(X) + eps`` is never stored: F2 and B1 recompute it from X (C channels) in registers. Saved for
backward, as on the ``recompute`` path: ``x`` and ``S0`` as the caller passed them and ``K(S0)`` (fp32);
with several updates the intermediate sources are recomputed from ``S0``. All arithmetic is fp32
whatever the inputs' dtype; the output is fp32 (float64 inputs take the ``recompute`` path).

GPU tensors run the compiled kernels. CPU tensors run the very same kernels under Triton's interpreter
where ``TRITON_INTERPRET=1`` is set (read at each call, so it may be set after Triton's import: the
kernels use Triton builtins only), which is how they are tested without a GPU; without it they take
the ``recompute`` path. Fused kernels exist for ``groups == C`` (the default of the layer and the
presets); other group counts, float64 and maps beyond the launch grid run :class:`RecomputedNDC` instead.
Where Triton is not installed, :func:`triton_deconvolution` raises an ImportError naming the fix.
"""
import math
import os
from typing import List, Optional, Tuple

import torch

from nnunetv2_deconver.ops.ndc_autograd import RecomputedNDC
from nnunetv2_deconver.ops.ndc_update import refuse_double_backward, run_updates
from nnunetv2_deconver.ops.precision import autocast_disabled

try:
    import triton
    from triton.runtime.interpreter import InterpretedFunction
    from nnunetv2_deconver.ops import ndc_triton_kernels as _raw
    TRITON_IMPORT_ERROR: Optional[ImportError] = None
except ImportError as error:  # pragma: no cover - exercised where Triton is missing
    triton = None
    TRITON_IMPORT_ERROR = error

__all__ = ["triton_available", "interpreting", "fused_supported", "triton_deconvolution", "TRITON_IMPORT_ERROR"]

_MAX_TILES = 65535  # the launch grid's second axis holds batch x channel tiles
# Tile sizes (rows = channels, block = voxels). On GPUs a tile holds the R sources of about one observed
# channel; untuned (docs/gpu.md). The interpreter pays per operation, not per element: large tiles.
_GPU_ROWS, _GPU_BLOCK = 4, 256
_INTERPRETER_ROWS, _INTERPRETER_BLOCK = 64, 4096
_kernels = {}


def triton_available() -> bool:
    return TRITON_IMPORT_ERROR is None


def interpreting() -> bool:
    """Whether CPU tensors run the kernels under Triton's interpreter (``TRITON_INTERPRET=1``)."""
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def _kernel(name: str, device_type: str):
    """The kernel ``name``: compiled for GPUs, interpreted for CPU tensors (Triton's interpreter)."""
    key = (name, device_type == "cpu")
    if key not in _kernels:
        fn = getattr(_raw, name)
        _kernels[key] = InterpretedFunction(fn) if device_type == "cpu" else triton.jit(fn)
    return _kernels[key]


def fused_supported(x: torch.Tensor, source: torch.Tensor, filters: torch.Tensor, groups: int) -> bool:
    """Whether the fused kernels take these operands (else :func:`triton_deconvolution` runs ``recompute``)."""
    floats = (torch.float16, torch.bfloat16, torch.float32)
    return (groups == x.shape[1] and all(t.dtype in floats for t in (x, source, filters))
            and (x.device.type == "cuda" or (x.device.type == "cpu" and interpreting()))
            and x.shape[0] * source.shape[1] <= _MAX_TILES)


def _as_5d(tensor: torch.Tensor) -> torch.Tensor:
    """``(B, C, *spatial)`` with 1-3 spatial axes as ``(B, C, D, H, W)``: a view, unit axes in front."""
    while tensor.dim() < 5:
        tensor = tensor.unsqueeze(2)
    return tensor


def _dense(tensor: torch.Tensor) -> torch.Tensor:
    """``tensor`` itself where it is dense (contiguous or channels-last), else a contiguous copy."""
    formats = [torch.contiguous_format] + ([torch.channels_last] if tensor.dim() == 4 else []) + \
        ([torch.channels_last_3d] if tensor.dim() == 5 else [])
    return tensor if any(tensor.is_contiguous(memory_format=f) for f in formats) else tensor.contiguous()


class _Launcher:
    """Launches the kernels for one set of operands (5D views, fp32 filter, block size, grid)."""

    def __init__(self, x: torch.Tensor, source: torch.Tensor, filters: torch.Tensor):
        self.device_type = x.device.type
        self.x = _as_5d(x)
        self.channels, self.ratio = x.shape[1], source.shape[1] // x.shape[1]
        self.spatial = tuple(self.x.shape[2:])
        self.kernel = tuple(_as_5d(filters).shape[2:])
        self.filters = _as_5d(filters).to(torch.float32).contiguous()
        voxels = math.prod(self.spatial)
        interpreted = self.device_type == "cpu"
        self.block = min(_INTERPRETER_BLOCK if interpreted else _GPU_BLOCK, triton.next_power_of_2(voxels))
        self.rows = min(_INTERPRETER_ROWS if interpreted else _GPU_ROWS, triton.next_power_of_2(source.shape[1]))
        self.blocks = triton.cdiv(voxels, self.block)
        self.batch = x.shape[0]

    def _grid(self, channels: int):
        return self.blocks, self.batch * triton.cdiv(channels, self.rows)

    def _sizes(self) -> List[int]:
        return [self.channels, self.ratio, *self.spatial]

    def _meta(self):
        kd, kh, kw = self.kernel
        return dict(KD=kd, KH=kh, KW=kw, ROWS=self.rows, BLOCK=self.block)

    def correlate(self, source: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        """``K(source)`` (fp32, laid out like ``like``, a C-channel tensor)."""
        out = torch.empty_like(like, dtype=torch.float32)
        src, dst = _as_5d(source), _as_5d(out)
        _kernel("correlate_kernel", self.device_type)[self._grid(self.channels)](
            src, *src.stride(), self.filters, dst, *dst.stride(), *self._sizes(), **self._meta())
        return out

    def update(self, source: torch.Tensor, reconstruction: torch.Tensor, eps: float) -> torch.Tensor:
        out = torch.empty_like(source, dtype=torch.float32)
        src, rec, dst = _as_5d(source), _as_5d(reconstruction), _as_5d(out)
        _kernel("update_kernel", self.device_type)[self._grid(self.channels * self.ratio)](
            self.x, *self.x.stride(), rec, *rec.stride(), src, *src.stride(), self.filters, dst, *dst.stride(),
            *self._sizes(), eps, **self._meta())
        return out

    def _partial(self) -> torch.Tensor:
        return torch.empty(self.batch * self.blocks, self.channels * self.ratio, math.prod(self.kernel),
                           dtype=torch.float32, device=self.x.device)

    def update_backward(self, source, reconstruction, grad, grad_q, grad_n, accumulate: bool, eps: float):
        """B1: returns ``dL/dD`` and the filter taps; fills ``grad_q`` and ``grad_n`` (all shaped like ``source``)."""
        grad_d, partial = torch.empty_like(grad_q), self._partial()
        src, rec, g = _as_5d(source), _as_5d(reconstruction), _as_5d(grad)
        _kernel("update_backward_kernel", self.device_type)[self._grid(self.channels * self.ratio)](
            self.x, *self.x.stride(), rec, *rec.stride(), src, *src.stride(), g, *g.stride(), self.filters,
            grad_d, grad_q, grad_n, partial, self.blocks, *self._sizes(), eps, ACCUMULATE=accumulate,
            **self._meta())
        return grad_d, partial.sum(0)

    def adjoint_accumulate(self, grad_q, grad_r, source) -> Tuple[torch.Tensor, torch.Tensor]:
        """B3: ``grad_q + A(grad_r)`` in ``grad_q``'s buffer, and the filter taps of ``<grad_r, K_V(source)>``."""
        partial = self._partial()
        src, rec = _as_5d(source), _as_5d(grad_r)
        _kernel("adjoint_accumulate_kernel", self.device_type)[self._grid(self.channels * self.ratio)](
            grad_q, rec, *rec.stride(), src, *src.stride(), self.filters, grad_q, partial, self.blocks,
            *self._sizes(), **self._meta())
        return grad_q, partial.sum(0)


@torch.library.custom_op("nnunetv2_deconver::ndc_triton_forward", mutates_args=())
def _forward(x: torch.Tensor, source: torch.Tensor, filters: torch.Tensor, eps: float,
             iterations: int) -> Tuple[torch.Tensor, torch.Tensor]:
    """``(S^(iterations), K(S0))``, both fp32; the second is kept for backward only."""
    with autocast_disabled(x.device.type):
        launch = _Launcher(x, source, filters)
        current, first_reconstruction = run_updates(source, iterations, lambda s: launch.correlate(s, x),
                                                    lambda _, s, reconstruction: launch.update(s, reconstruction, eps))
        return current, first_reconstruction


@_forward.register_fake
def _(x, source, filters, eps, iterations):
    return torch.empty_like(source, dtype=torch.float32), torch.empty_like(x, dtype=torch.float32)


@torch.library.custom_op("nnunetv2_deconver::ndc_triton_backward", mutates_args=())
def _backward(grad: torch.Tensor, x: torch.Tensor, source: torch.Tensor, filters: torch.Tensor,
              first_reconstruction: torch.Tensor, eps: float,
              iterations: int) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(dL/dx, dL/dS0, dL/dV)`` in the dtypes and layouts of ``x``, ``source`` and ``filters``."""
    with autocast_disabled(x.device.type):
        launch = _Launcher(x, source, filters)
        states = []  # (S_t, K(S_t)) for every update, the intermediate sources recomputed from S0
        run_updates(source, iterations, lambda s: launch.correlate(s, x),
                    lambda _, s, reconstruction: launch.update(s, reconstruction, eps), first_reconstruction, states)
        grad_n = torch.empty_like(source, dtype=torch.float32)
        taps = None
        owned = False  # whether ``grad`` is a buffer of this function (then overwritten in place)
        for step in reversed(range(iterations)):
            current, reconstruction = states.pop()
            grad_q = grad if owned else torch.empty_like(source, dtype=torch.float32)
            grad_d, b1_taps = launch.update_backward(current, reconstruction, grad, grad_q, grad_n,
                                                     step != iterations - 1, eps)
            grad_r = launch.correlate(grad_d, x)
            del grad_d
            grad, b3_taps = launch.adjoint_accumulate(grad_q, grad_r, current)
            owned = True
            taps = b1_taps + b3_taps if taps is None else taps.add_(b1_taps).add_(b3_taps)
        grad_x = launch.correlate(grad_n, x).to(x.dtype)
        grad_filters = taps.reshape(filters.shape).to(filters.dtype)
        return grad_x, grad.to(source.dtype), grad_filters


@_backward.register_fake
def _(grad, x, source, filters, first_reconstruction, eps, iterations):
    return torch.empty_like(x), torch.empty_like(source), filters.new_empty(filters.shape)


def _setup_context(ctx, inputs, output):
    x, source, filters, eps, iterations = inputs
    ctx.save_for_backward(x, source, filters, output[1])
    ctx.eps, ctx.iterations = eps, iterations


def _autograd_backward(ctx, grad_output, _grad_reconstruction):
    refuse_double_backward()
    x, source, filters, first_reconstruction = ctx.saved_tensors
    grads = _backward(grad_output, x, source, filters, first_reconstruction, ctx.eps, ctx.iterations)
    return (*grads, None, None)


_forward.register_autograd(_autograd_backward, setup_context=_setup_context)


def triton_deconvolution(x: torch.Tensor, source: torch.Tensor, filters: torch.Tensor, groups: int, eps: float,
                         iterations: int) -> torch.Tensor:
    """The update of :func:`~nnunetv2_deconver.ops.ndc.nonnegative_deconvolution` through the fused kernels.

    Operands the kernels do not take (see :func:`fused_supported`) run the ``recompute`` path instead.
    Raises ImportError where Triton is not installed.
    """
    if TRITON_IMPORT_ERROR is not None:
        raise ImportError("nonnegative_deconvolution(implementation='triton') needs Triton: `pip install triton` "
                          "(it ships with the CUDA builds of torch on Linux), or choose another implementation "
                          f"({TRITON_IMPORT_ERROR})") from TRITON_IMPORT_ERROR
    if not fused_supported(x, source, filters, groups):
        return RecomputedNDC.apply(x, source, filters, groups, eps, iterations, None)
    return _forward(_dense(x), _dense(source), filters, float(eps), int(iterations))[0]
