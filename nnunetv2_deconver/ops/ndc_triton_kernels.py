"""Triton kernels of the NDC update for one observed channel per group (G = C, R = E / C sources each).

Undecorated on purpose: :mod:`nnunetv2_deconver.ops.ndc_triton` compiles them with ``triton.jit`` for GPU
tensors and wraps them in Triton's interpreter for CPU tensors. Every tensor arrives as a pointer and
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

# A sum over the block as ``tl.reduce`` with Triton's own add combiner: compiled, it is ``tl.sum``; the
# interpreter maps this combiner to numpy's sum. (``tl.sum`` and ``tl.zeros`` are jit functions that only
# run interpreted when TRITON_INTERPRET=1 was set before Triton's import; the kernels use builtins only.)
_ADD = tl.standard._sum_combine


def correlate_kernel(src, s_b, s_c, s_d, s_h, s_w, filt, out, o_b, o_c, o_d, o_h, o_w,
                     C, R, D, H, W,
                     KD: tl.constexpr, KH: tl.constexpr, KW: tl.constexpr, ROWS: tl.constexpr, BLOCK: tl.constexpr):
    """``out = K(src)``: reads each source once (plus halo), writes each observed channel once."""
    block = tl.program_id(0)
    tile = tl.program_id(1).to(tl.int64)
    tiles = (C + ROWS - 1) // ROWS
    b = tile // tiles
    c = (tile % tiles) * ROWS + tl.arange(0, ROWS).to(tl.int64)
    rows_ok = c < C
    c_safe = tl.minimum(c, C - 1)  # rows past the last channel read a valid one and store nothing
    p = block * BLOCK + tl.arange(0, BLOCK)
    inside = p < D * H * W
    w0 = p % W
    h0 = (p // W) % H
    d0 = p // (W * H)
    acc = tl.full([ROWS, BLOCK], 0.0, tl.float32)
    for r in range(R):
        e = c_safe * R + r
        base = src + b * s_b + e[:, None] * s_c
        for kd in tl.static_range(KD):
            d = d0 + (kd - KD // 2)
            ok_d = inside & (d >= 0) & (d < D)
            for kh in tl.static_range(KH):
                h = h0 + (kh - KH // 2)
                ok_h = ok_d & (h >= 0) & (h < H)
                s_dh = d * s_d + h * s_h
                for kw in tl.static_range(KW):
                    w = w0 + (kw - KW // 2)
                    ok = (ok_h & (w >= 0) & (w < W))[None, :]
                    weight = tl.load(filt + e * (KD * KH * KW) + (kd * KH + kh) * KW + kw)
                    value = tl.load(base + (s_dh + w * s_w)[None, :], mask=ok, other=0.0)
                    acc += weight[:, None] * value.to(tl.float32)
    mask = rows_ok[:, None] & inside[None, :]
    tl.store(out + b * o_b + c[:, None] * o_c + (d0 * o_d + h0 * o_h + w0 * o_w)[None, :], acc, mask=mask)


def update_kernel(x, x_b, x_c, x_d, x_h, x_w, rec, r_b, r_c, r_d, r_h, r_w, src, s_b, s_c, s_d, s_h, s_w,
                  filt, out, o_b, o_c, o_d, o_h, o_w, C, R, D, H, W, eps,
                  KD: tl.constexpr, KH: tl.constexpr, KW: tl.constexpr, ROWS: tl.constexpr, BLOCK: tl.constexpr):
    """``out = S * (A(X) + eps) / (A(K(S)) + eps)`` given ``rec = K(S)``: eq. (7) in one pass."""
    block = tl.program_id(0)
    tile = tl.program_id(1).to(tl.int64)
    tiles = (C * R + ROWS - 1) // ROWS
    b = tile // tiles
    e = (tile % tiles) * ROWS + tl.arange(0, ROWS).to(tl.int64)
    rows_ok = e < C * R
    e_safe = tl.minimum(e, C * R - 1)  # rows past the last source read a valid one and store nothing
    c = e_safe // R
    p = block * BLOCK + tl.arange(0, BLOCK)
    inside = p < D * H * W
    w0 = p % W
    h0 = (p // W) % H
    d0 = p // (W * H)
    x_base = x + b * x_b + c[:, None] * x_c
    r_base = rec + b * r_b + c[:, None] * r_c
    adj_x = tl.full([ROWS, BLOCK], 0.0, tl.float32)
    adj_r = tl.full([ROWS, BLOCK], 0.0, tl.float32)
    for kd in tl.static_range(KD):
        d = d0 - (kd - KD // 2)
        ok_d = inside & (d >= 0) & (d < D)
        for kh in tl.static_range(KH):
            h = h0 - (kh - KH // 2)
            ok_h = ok_d & (h >= 0) & (h < H)
            x_dh = d * x_d + h * x_h
            r_dh = d * r_d + h * r_h
            for kw in tl.static_range(KW):
                w = w0 - (kw - KW // 2)
                ok = (ok_h & (w >= 0) & (w < W))[None, :]
                weight = tl.load(filt + e_safe * (KD * KH * KW) + (kd * KH + kh) * KW + kw)
                xv = tl.load(x_base + (x_dh + w * x_w)[None, :], mask=ok, other=0.0)
                rv = tl.load(r_base + (r_dh + w * r_w)[None, :], mask=ok, other=0.0)
                adj_x += weight[:, None] * xv.to(tl.float32)
                adj_r += weight[:, None] * rv.to(tl.float32)
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
    block = tl.program_id(0)
    tile = tl.program_id(1).to(tl.int64)
    tiles = (C * R + ROWS - 1) // ROWS
    b = tile // tiles
    e = (tile % tiles) * ROWS + tl.arange(0, ROWS).to(tl.int64)
    rows_ok = e < C * R
    e_safe = tl.minimum(e, C * R - 1)  # rows past the last source read a valid one and store nothing
    c = e_safe // R
    p = block * BLOCK + tl.arange(0, BLOCK)
    inside = p < D * H * W
    w0 = p % W
    h0 = (p // W) % H
    d0 = p // (W * H)
    x_base = x + b * x_b + c[:, None] * x_c
    r_base = rec + b * r_b + c[:, None] * r_c
    adj_x = tl.full([ROWS, BLOCK], 0.0, tl.float32)
    adj_r = tl.full([ROWS, BLOCK], 0.0, tl.float32)
    for kd in tl.static_range(KD):
        d = d0 - (kd - KD // 2)
        ok_d = inside & (d >= 0) & (d < D)
        for kh in tl.static_range(KH):
            h = h0 - (kh - KH // 2)
            ok_h = ok_d & (h >= 0) & (h < H)
            x_dh = d * x_d + h * x_h
            r_dh = d * r_d + h * r_h
            for kw in tl.static_range(KW):
                w = w0 - (kw - KW // 2)
                ok = (ok_h & (w >= 0) & (w < W))[None, :]
                weight = tl.load(filt + e_safe * (KD * KH * KW) + (kd * KH + kh) * KW + kw)
                xv = tl.load(x_base + (x_dh + w * x_w)[None, :], mask=ok, other=0.0)
                rv = tl.load(r_base + (r_dh + w * r_w)[None, :], mask=ok, other=0.0)
                adj_x += weight[:, None] * xv.to(tl.float32)
                adj_r += weight[:, None] * rv.to(tl.float32)
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
    for kd in tl.static_range(KD):
        d = d0 - (kd - KD // 2)
        ok_d = inside & (d >= 0) & (d < D)
        for kh in tl.static_range(KH):
            h = h0 - (kh - KH // 2)
            ok_h = ok_d & (h >= 0) & (h < H)
            x_dh = d * x_d + h * x_h
            r_dh = d * r_d + h * r_h
            for kw in tl.static_range(KW):
                w = w0 - (kw - KW // 2)
                ok = (ok_h & (w >= 0) & (w < W))[None, :]
                xv = tl.load(x_base + (x_dh + w * x_w)[None, :], mask=ok, other=0.0).to(tl.float32)
                rv = tl.load(r_base + (r_dh + w * r_w)[None, :], mask=ok, other=0.0).to(tl.float32)
                taps = tl.reduce(u * xv + grad_denominator * rv, 1, _ADD)
                tl.store(partial + row + (kd * KH + kh) * KW + kw, taps, mask=rows_ok)


def adjoint_accumulate_kernel(grad_q, grad_r, r_b, r_c, r_d, r_h, r_w, src, s_b, s_c, s_d, s_h, s_w,
                              filt, out, partial, blocks, C, R, D, H, W,
                              KD: tl.constexpr, KH: tl.constexpr, KW: tl.constexpr, ROWS: tl.constexpr,
                              BLOCK: tl.constexpr):
    """``out = grad_q + A(grad_r)`` (``dL/dS_t``; ``out`` may be ``grad_q``) and the taps of ``<grad_r, K_V(src)>``.

    ``grad_q`` and ``out`` are laid out like ``src`` (strides ``s_*``).
    """
    block = tl.program_id(0)
    tile = tl.program_id(1).to(tl.int64)
    tiles = (C * R + ROWS - 1) // ROWS
    b = tile // tiles
    e = (tile % tiles) * ROWS + tl.arange(0, ROWS).to(tl.int64)
    rows_ok = e < C * R
    e_safe = tl.minimum(e, C * R - 1)  # rows past the last source read a valid one and store nothing
    c = e_safe // R
    p = block * BLOCK + tl.arange(0, BLOCK)
    inside = p < D * H * W
    w0 = p % W
    h0 = (p // W) % H
    d0 = p // (W * H)
    mask = rows_ok[:, None] & inside[None, :]
    here = b * s_b + e[:, None] * s_c + (d0 * s_d + h0 * s_h + w0 * s_w)[None, :]
    s = tl.load(src + here, mask=mask, other=0.0).to(tl.float32)
    acc = tl.load(grad_q + here, mask=mask, other=0.0)
    r_base = grad_r + b * r_b + c[:, None] * r_c
    row = ((b * blocks + block) * (C * R) + e) * (KD * KH * KW)
    for kd in tl.static_range(KD):
        d = d0 - (kd - KD // 2)
        ok_d = inside & (d >= 0) & (d < D)
        for kh in tl.static_range(KH):
            h = h0 - (kh - KH // 2)
            ok_h = ok_d & (h >= 0) & (h < H)
            r_dh = d * r_d + h * r_h
            for kw in tl.static_range(KW):
                w = w0 - (kw - KW // 2)
                ok = (ok_h & (w >= 0) & (w < W))[None, :]
                tap = (kd * KH + kh) * KW + kw
                weight = tl.load(filt + e_safe * (KD * KH * KW) + tap)
                rv = tl.load(r_base + (r_dh + w * r_w)[None, :], mask=ok, other=0.0)
                acc += weight[:, None] * rv
                tl.store(partial + row + tap, tl.reduce(s * rv, 1, _ADD), mask=rows_ok)
    tl.store(out + here, acc, mask=mask)
