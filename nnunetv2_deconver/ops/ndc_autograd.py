"""The NDC update as a custom autograd function that recomputes instead of storing.

Math (paper eqs. 1, 3, 7), with ``K(S) = conv(S, V)`` (E -> C) and its adjoint ``A`` (C -> E)::

    N = A(X) + eps,  R_t = K(S_t),  D_t = A(R_t) + eps,  S_{t+1} = S_t * N / D_t

Backward for one update, given ``g = dL/dS_{t+1}`` and ``q = N / D_t``::

    u = g * S_t / D_t            dL/dN += u            (N enters every update)
    dL/dD_t = -u * q             dL/dR_t = K(dL/dD_t)  (A's adjoint is K)
    dL/dS_t = g * q + A(dL/dR_t)
    dL/dX = K(dL/dN)

and the filter gradient is the sum of the three bilinear terms ``N = A_V(X)``, ``D = A_V(R)``,
``R = K_V(S)``. On the channels-last path all three are taken as weight gradients of the *adjoint
written as a convolution* with the transposed, flipped filter ``V^-`` (``<g, K_V(S)> = <A_V(g), S>``),
because that form, input C channels and output E channels, is the cheap one for grouped
convolutions on the CPU.

Saved for backward, and only these: the observed ``X`` and the initial source ``S0`` as the caller
passed them (the tensors exist anyway: the caller's autograd graph holds them, so keeping a reference
costs nothing extra; they are upcast and re-laid-out again in backward, an exact operation), the
filter, and ``K(S0)`` (C channels, one grouped convolution that backward would otherwise redo).
``A(X)`` and ``A(K(S0))`` (E channels each) are recomputed in backward; with more than one update the
intermediate sources are recomputed from ``S0`` as well, so the saved memory does not grow with the
number of updates. The naive composition keeps about three times as many activation bytes.

Double backward is not supported (the backward is written by hand): a backward asked to build a
graph (``create_graph=True``) raises a RuntimeError that names the naive path, which is twice
differentiable.
"""
from functools import partial
from typing import Optional

import torch

from nnunetv2_deconver.ops.layout import memory_format_of
from nnunetv2_deconver.ops.ndc_operators import Operators
from nnunetv2_deconver.ops.ndc_update import refuse_double_backward, run_updates
from nnunetv2_deconver.ops.precision import autocast_disabled

__all__ = ["RecomputedNDC", "update_backward"]


class RecomputedNDC(torch.autograd.Function):
    """``S^(iterations)`` from ``(x, source, filters)``; see the module docstring for what is saved.

    ``layout`` is ``None`` to compute in the inputs' own layout (GPU, 1D) or a channels-last memory
    format to convert to inside the function (CPU, where grouped convolutions are several times
    faster in it). The output and the input gradients are returned in the layout of ``source`` and
    ``x``; the values do not depend on the layout. Elementwise work runs in place wherever a buffer
    is dead: on the CPU a fresh activation-sized allocation costs as much as the operation itself.
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor, source: torch.Tensor, filters: torch.Tensor, groups: int, eps: float,
                iterations: int, layout: Optional[torch.memory_format]) -> torch.Tensor:
        # fp16 cannot hold eps and overflows in the ratio: the update always runs in (at least) fp32.
        dtype = torch.promote_types(torch.promote_types(x.dtype, source.dtype), torch.float32)
        with autocast_disabled(x.device.type):
            ops = Operators(filters, groups, dtype, layout)
            numerator = ops.adjoint_of(ops.prepare(x)[0], eps)
            prepared, owned = ops.prepare(source)

            def step(t, current, reconstruction):
                denominator = ops.adjoint_of(reconstruction, eps)
                # (S * N) / D as the naive composition computes it (N * S == S * N exactly)
                if t == iterations - 1:  # N is dead after the last update: reuse its buffer
                    return numerator.mul_(current).div_(denominator)
                if owned or t > 0:
                    return current.mul_(numerator).div_(denominator)
                return (current * numerator).div_(denominator)

            current, first_reconstruction = run_updates(prepared, iterations, ops.correlate, step)
            output = current.contiguous(memory_format=memory_format_of(source))
        ctx.save_for_backward(x, source, filters, first_reconstruction)
        ctx.groups, ctx.eps, ctx.iterations, ctx.layout, ctx.dtype = groups, eps, iterations, layout, dtype
        return output

    @staticmethod
    def backward(ctx, grad_output: torch.Tensor):
        refuse_double_backward()
        x, source, filters, first_reconstruction = ctx.saved_tensors
        need_x, need_source, need_filters = ctx.needs_input_grad[:3]
        with autocast_disabled(x.device.type):
            ops = Operators(filters, ctx.groups, ctx.dtype, ctx.layout)
            grad_x, grad_source, grad_filters = update_backward(
                ops, ops.prepare(x)[0], ops.prepare(source)[0], first_reconstruction, ops.prepare(grad_output)[0],
                ctx.eps, ctx.iterations, need_x, need_source, need_filters)
            if need_x:
                grad_x = grad_x.to(x.dtype).contiguous(memory_format=memory_format_of(x))
            if need_source:
                grad_source = grad_source.to(source.dtype).contiguous(memory_format=memory_format_of(source))
            if need_filters:
                grad_filters = grad_filters.to(filters.dtype)
        return grad_x, grad_source, grad_filters, None, None, None, None


def _next_source(ops: Operators, numerator: torch.Tensor, eps: float, _, current: torch.Tensor,
                 reconstruction: torch.Tensor) -> torch.Tensor:
    """``S_{t+1} = S_t * N / (A(R_t) + eps)`` into a new buffer (backward keeps ``S_t``)."""
    return (current * numerator).div_(ops.adjoint_of(reconstruction, eps))


def update_backward(ops: Operators, observed: torch.Tensor, source: torch.Tensor,
                    first_reconstruction: Optional[torch.Tensor], grad: torch.Tensor, eps: float, iterations: int,
                    need_x: bool = True, need_source: bool = True, need_filters: bool = True):
    """Gradients of ``S^(iterations)`` for ``X`` (``observed``), ``S0`` (``source``) and ``V`` (see the module
    docstring), all operands already in ``ops``' dtype and layout; ``None`` for a gradient not asked for.

    ``first_reconstruction`` is ``K(S0)`` when the caller kept it, else ``None`` (recomputed here).
    """
    numerator = ops.adjoint_of(observed, eps)
    states = []  # (S_t, K(S_t)) for every update, the intermediate sources recomputed from S0
    run_updates(source, iterations, ops.correlate, partial(_next_source, ops, numerator, eps), first_reconstruction,
                states)
    grad_numerator = grad_filters_total = grad_x = None

    def accumulate(total, term):
        return term if total is None else total.add_(term)

    # Buffers are released as early as the math allows: for one update at most three E-channel
    # buffers live at once besides the saved tensors and the incoming gradient.
    for step in reversed(range(iterations)):
        current, reconstruction = states.pop()
        denominator = ops.adjoint_of(reconstruction, eps)  # D_t
        scaled = (grad * current).div_(denominator)  # u = g * S_t / D_t
        # q = N / D_t; the first update's q is N's last use, so it takes N's buffer
        ratio = numerator.div_(denominator) if step == 0 else numerator / denominator
        del denominator
        if step == 0:
            del numerator
            grad_numerator = accumulate(grad_numerator, scaled)  # dL/dN, complete
            if need_x:  # dL/dX = K(dL/dN)
                grad_x = ops.correlate(grad_numerator)
            if need_filters:
                grad_filters_total = accumulate(grad_filters_total,
                                                ops.filter_grad_of_adjoint(observed, grad_numerator))
            del grad_numerator
        else:  # the sum over updates keeps its own buffer, since u's is overwritten next
            grad_numerator = scaled.clone() if grad_numerator is None else grad_numerator.add_(scaled)
        grad_denominator = scaled.mul_(ratio).neg_()  # dL/dD_t = -u * q, in u's buffer
        del scaled
        need_chain = need_source or step > 0
        if need_chain or need_filters:
            grad_reconstruction = ops.correlate(grad_denominator)  # dL/dR_t = K(dL/dD_t)
        if need_filters:
            grad_filters_total = accumulate(
                grad_filters_total, ops.filter_grad_of_adjoint(reconstruction, grad_denominator))
            grad_filters_total.add_(ops.filter_grad_of_correlation(current, grad_reconstruction))
        del grad_denominator, reconstruction, current
        if need_chain:  # dL/dS_t = A(dL/dR_t) + g * q
            grad = ops.adjoint_of(grad_reconstruction).addcmul_(grad, ratio)
        if need_chain or need_filters:
            del grad_reconstruction
        del ratio
    grad_filters = ops.filter_grad(grad_filters_total) if need_filters else None
    return grad_x, (grad if need_source else None), grad_filters
