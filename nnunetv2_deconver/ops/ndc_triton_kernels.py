"""Triton kernels of the NDC update for one observed channel per group (G = C, R = E / C sources each).

The kernels are undecorated on purpose: :mod:`nnunetv2_deconver.ops.ndc_triton` compiles them with
``triton.jit`` for GPU tensors and wraps them in Triton's interpreter for CPU tensors. What they share, a
program's tile, a stencil tap's neighbours and the adjoint stencil, are device functions (:func:`_device`)
that serve both. Every tensor arrives as a pointer and
five strides of its ``(B, channels, D, H, W)`` view (2D and 1D maps have unit leading spatial axes), so
contiguous and channels-last inputs of any float dtype are read in place; all arithmetic is fp32.

A program owns a tile: ``ROWS`` consecutive channels of one sample (observed channels for ``K``, sources
otherwise) by ``BLOCK`` voxels (flat index over ``D*H*W``); the loads of a tap are shared by the rows.
With ``M = k // 2`` per axis and ``e = c * R + r``::

    K(S)[c, p] = sum_r sum_m V[c, r, m] S[c*R + r, p + m - M]      (correlate: E -> C)
    A(Y)[e, q] = sum_m V[c, r, m] Y[c, q - m + M]                   (adjoint:   C -> E)

The filter ``V`` is fp32 and contiguous, ``(C, R, KD, KH, KW)``, so ``V[c, r, m]`` sits at
``e * KD*KH*KW + m``. Filter-gradient terms are written as one partial sum per program and tap into
``partial[(batch * blocks + block), e, m]``; the caller reduces over the first axis (deterministic).
"""
import triton.language as tl
from triton.runtime.interpreter import InterpretedFunction
from triton.runtime.jit import JITFunction

# A sum over the block as ``tl.reduce`` with Triton's own add combiner: compiled, it is ``tl.sum``; the
# interpreter maps this combiner to numpy's sum. (``tl.sum`` and ``tl.zeros`` are jit functions that only
# run interpreted when TRITON_INTERPRET=1 was set before Triton's import; the kernels use builtins only.)
_ADD = tl.standard._sum_combine


class _DeviceFunction(JITFunction):
    """A ``triton.jit`` device function that compiled kernels inline and interpreted kernels call as Python.

    A kernel run by Triton's interpreter calls its helpers as plain Python, which a ``JITFunction`` refuses
    unless TRITON_INTERPRET=1 was set before Triton's import; this one runs the interpreter's rewrite of
    the function instead, so the kernels share code under both.
    """

    def __call__(self, *args, **kwargs):
        return InterpretedFunction(self.fn)(*args, **kwargs)


def _device(fn) -> _DeviceFunction:
    return _DeviceFunction(fn)


@_device
def _tile(rows_total, D, H, W, ROWS: tl.constexpr, BLOCK: tl.constexpr):
    """This program's tile: its voxel block, sample ``b``, its ``ROWS`` channel indices of ``rows_total``,
    which of them exist, a valid index for each (rows past the last read a valid one and store nothing),
    which of its ``BLOCK`` flat voxels exist, and their ``(d, h, w)``."""
    block = tl.program_id(0)
    tile = tl.program_id(1).to(tl.int64)
    tiles = (rows_total + ROWS - 1) // ROWS
    rows = (tile % tiles) * ROWS + tl.arange(0, ROWS).to(tl.int64)
    p = block * BLOCK + tl.arange(0, BLOCK)
    return (block, tile // tiles, rows, rows < rows_total, tl.minimum(rows, rows_total - 1), p < D * H * W,
            p // (W * H), (p // W) % H, p % W)


@_device
def _neighbour(tap: tl.constexpr, SIGN: tl.constexpr, d0, h0, w0, inside, D, H, W,
               KD: tl.constexpr, KH: tl.constexpr, KW: tl.constexpr):
    """For the filter tap ``m = (kd, kh, kw)`` (flat index ``tap``), each voxel's neighbour ``p + SIGN (m - M)``
    (``+1``: the correlation ``K``, ``-1``: the adjoint ``A``) and whether it lies inside the map."""
    d = d0 + SIGN * (tap // (KH * KW) - KD // 2)
    h = h0 + SIGN * ((tap // KW) % KH - KH // 2)
    w = w0 + SIGN * (tap % KW - KW // 2)
    return d, h, w, inside & (d >= 0) & (d < D) & (h >= 0) & (h < H) & (w >= 0) & (w < W)


@_device
def _adjoints(x_base, x_d, x_h, x_w, r_base, r_d, r_h, r_w, weights, d0, h0, w0, inside, D, H, W,
              KD: tl.constexpr, KH: tl.constexpr, KW: tl.constexpr, ROWS: tl.constexpr, BLOCK: tl.constexpr):
    """``A(X)`` and ``A(rec)`` for the tile's sources, reading each observed channel's taps once for both."""
    adj_x = tl.full([ROWS, BLOCK], 0.0, tl.float32)
    adj_r = tl.full([ROWS, BLOCK], 0.0, tl.float32)
    for tap in tl.static_range(KD * KH * KW):
        d, h, w, ok = _neighbour(tap, -1, d0, h0, w0, inside, D, H, W, KD, KH, KW)
        weight = tl.load(weights + tap)[:, None]
        adj_x += weight * tl.load(x_base + (d * x_d + h * x_h + w * x_w)[None, :], mask=ok[None, :],
                                  other=0.0).to(tl.float32)
        adj_r += weight * tl.load(r_base + (d * r_d + h * r_h + w * r_w)[None, :], mask=ok[None, :],
                                  other=0.0).to(tl.float32)
    return adj_x, adj_r


def correlate_kernel(src, s_b, s_c, s_d, s_h, s_w, filt, out, o_b, o_c, o_d, o_h, o_w,
                     C, R, D, H, W,
                     KD: tl.constexpr, KH: tl.constexpr, KW: tl.constexpr, ROWS: tl.constexpr, BLOCK: tl.constexpr):
    """``out = K(src)``: reads each source once (plus halo), writes each observed channel once."""
    _, b, c, rows_ok, c_safe, inside, d0, h0, w0 = _tile(C, D, H, W, ROWS, BLOCK)
    acc = tl.full([ROWS, BLOCK], 0.0, tl.float32)
    for r in range(R):
        e = c_safe * R + r
        base = src + b * s_b + e[:, None] * s_c
        for tap in tl.static_range(KD * KH * KW):
            d, h, w, ok = _neighbour(tap, 1, d0, h0, w0, inside, D, H, W, KD, KH, KW)
            weight = tl.load(filt + e * (KD * KH * KW) + tap)
            value = tl.load(base + (d * s_d + h * s_h + w * s_w)[None, :], mask=ok[None, :], other=0.0)
            acc += weight[:, None] * value.to(tl.float32)
    mask = rows_ok[:, None] & inside[None, :]
    tl.store(out + b * o_b + c[:, None] * o_c + (d0 * o_d + h0 * o_h + w0 * o_w)[None, :], acc, mask=mask)


def update_kernel(x, x_b, x_c, x_d, x_h, x_w, rec, r_b, r_c, r_d, r_h, r_w, src, s_b, s_c, s_d, s_h, s_w,
                  filt, out, o_b, o_c, o_d, o_h, o_w, C, R, D, H, W, eps,
                  KD: tl.constexpr, KH: tl.constexpr, KW: tl.constexpr, ROWS: tl.constexpr, BLOCK: tl.constexpr):
    """``out = S * (A(X) + eps) / (A(K(S)) + eps)`` given ``rec = K(S)``: eq. (7) in one pass."""
    _, b, e, rows_ok, e_safe, inside, d0, h0, w0 = _tile(C * R, D, H, W, ROWS, BLOCK)
    c = e_safe // R
    adj_x, adj_r = _adjoints(x + b * x_b + c[:, None] * x_c, x_d, x_h, x_w, rec + b * r_b + c[:, None] * r_c,
                             r_d, r_h, r_w, filt + e_safe * (KD * KH * KW), d0, h0, w0, inside, D, H, W,
                             KD, KH, KW, ROWS, BLOCK)
    mask = rows_ok[:, None] & inside[None, :]
    s = tl.load(src + b * s_b + e[:, None] * s_c + (d0 * s_d + h0 * s_h + w0 * s_w)[None, :], mask=mask, other=0.0)
    result = s.to(tl.float32) * (adj_x + eps) / (adj_r + eps)
    tl.store(out + b * o_b + e[:, None] * o_c + (d0 * o_d + h0 * o_h + w0 * o_w)[None, :], result, mask=mask)


def update_backward_kernel(x, x_b, x_c, x_d, x_h, x_w, rec, r_b, r_c, r_d, r_h, r_w,
                           src, s_b, s_c, s_d, s_h, s_w, grad, g_b, g_c, g_d, g_h, g_w,
                           filt, grad_d, grad_q, grad_n, partial, blocks, C, R, D, H, W, eps,
                           ACCUMULATE: tl.constexpr, KD: tl.constexpr, KH: tl.constexpr, KW: tl.constexpr,
                           ROWS: tl.constexpr, BLOCK: tl.constexpr):
    """The elementwise backward of one update, with ``N = A(X) + eps`` and ``D = A(rec) + eps`` recomputed.

    ``u = g S / D``; writes ``dL/dD = -u N / D`` to ``grad_d``, ``g N / D`` to ``grad_q`` (may be ``grad``'s
    own buffer), ``u`` to (or, with ``ACCUMULATE``, onto) ``grad_n``, and the taps of
    ``<u, A_V(X)> + <dL/dD, A_V(rec)>`` to ``partial``. ``grad_d``, ``grad_q`` and ``grad_n`` are
    laid out like ``src`` (strides ``s_*``).
    """
    block, b, e, rows_ok, e_safe, inside, d0, h0, w0 = _tile(C * R, D, H, W, ROWS, BLOCK)
    c = e_safe // R
    x_base = x + b * x_b + c[:, None] * x_c
    r_base = rec + b * r_b + c[:, None] * r_c
    adj_x, adj_r = _adjoints(x_base, x_d, x_h, x_w, r_base, r_d, r_h, r_w, filt + e_safe * (KD * KH * KW),
                             d0, h0, w0, inside, D, H, W, KD, KH, KW, ROWS, BLOCK)
    mask = rows_ok[:, None] & inside[None, :]
    here = b * s_b + e[:, None] * s_c + (d0 * s_d + h0 * s_h + w0 * s_w)[None, :]
    s = tl.load(src + here, mask=mask, other=0.0).to(tl.float32)
    g = tl.load(grad + b * g_b + e[:, None] * g_c + (d0 * g_d + h0 * g_h + w0 * g_w)[None, :], mask=mask,
                other=0.0).to(tl.float32)
    denominator = adj_r + eps
    ratio = (adj_x + eps) / denominator
    u = tl.where(mask, g * s / denominator, 0.0)
    grad_denominator = tl.where(mask, -u * ratio, 0.0)
    tl.store(grad_d + here, grad_denominator, mask=mask)
    tl.store(grad_q + here, g * ratio, mask=mask)
    if ACCUMULATE:
        u_total = tl.load(grad_n + here, mask=mask, other=0.0) + u
    else:
        u_total = u
    tl.store(grad_n + here, u_total, mask=mask)
    row = ((b * blocks + block) * (C * R) + e) * (KD * KH * KW)
    for tap in tl.static_range(KD * KH * KW):
        d, h, w, ok = _neighbour(tap, -1, d0, h0, w0, inside, D, H, W, KD, KH, KW)
        xv = tl.load(x_base + (d * x_d + h * x_h + w * x_w)[None, :], mask=ok[None, :], other=0.0).to(tl.float32)
        rv = tl.load(r_base + (d * r_d + h * r_h + w * r_w)[None, :], mask=ok[None, :], other=0.0).to(tl.float32)
        tl.store(partial + row + tap, tl.reduce(u * xv + grad_denominator * rv, 1, _ADD), mask=rows_ok)


def adjoint_accumulate_kernel(grad_q, grad_r, r_b, r_c, r_d, r_h, r_w, src, s_b, s_c, s_d, s_h, s_w,
                              filt, out, partial, blocks, C, R, D, H, W,
                              KD: tl.constexpr, KH: tl.constexpr, KW: tl.constexpr, ROWS: tl.constexpr,
                              BLOCK: tl.constexpr):
    """``out = grad_q + A(grad_r)`` (``dL/dS_t``; ``out`` may be ``grad_q``) and the taps of ``<grad_r, K_V(src)>``.

    ``grad_q`` and ``out`` are laid out like ``src`` (strides ``s_*``).
    """
    block, b, e, rows_ok, e_safe, inside, d0, h0, w0 = _tile(C * R, D, H, W, ROWS, BLOCK)
    c = e_safe // R
    mask = rows_ok[:, None] & inside[None, :]
    here = b * s_b + e[:, None] * s_c + (d0 * s_d + h0 * s_h + w0 * s_w)[None, :]
    s = tl.load(src + here, mask=mask, other=0.0).to(tl.float32)
    acc = tl.load(grad_q + here, mask=mask, other=0.0)
    r_base = grad_r + b * r_b + c[:, None] * r_c
    row = ((b * blocks + block) * (C * R) + e) * (KD * KH * KW)
    for tap in tl.static_range(KD * KH * KW):
        d, h, w, ok = _neighbour(tap, -1, d0, h0, w0, inside, D, H, W, KD, KH, KW)
        weight = tl.load(filt + e_safe * (KD * KH * KW) + tap)
        rv = tl.load(r_base + (d * r_d + h * r_h + w * r_w)[None, :], mask=ok[None, :], other=0.0)
        acc += weight[:, None] * rv
        tl.store(partial + row + tap, tl.reduce(s * rv, 1, _ADD), mask=rows_ok)
    tl.store(out + here, acc, mask=mask)
