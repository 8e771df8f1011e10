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
from typing import Callable, Optional, Tuple

import torch

from nnunetv2_deconver.ops.by_dimension import CHANNELS_LAST, CONV_FN, CONV_TRANSPOSED_FN
from nnunetv2_deconver.ops.precision import autocast_disabled

__all__ = ["RecomputedNDC", "Operators", "differentiable_operators", "update_backward", "adjoint_filters",
           "memory_format_of"]


def memory_format_of(tensor: torch.Tensor) -> torch.memory_format:
    """The layout a tensor is dense in: channels-last (2D/3D) if it is, else the default layout."""
    channels_last = CHANNELS_LAST.get(tensor.dim() - 2)
    if channels_last is not None and not tensor.is_contiguous() and tensor.is_contiguous(memory_format=channels_last):
        return channels_last
    return torch.contiguous_format


def adjoint_filters(filters: torch.Tensor, groups: int) -> torch.Tensor:
    """``V^-``: the filter of ``A`` written as a grouped convolution, ``(E, C // groups, *kernel)``.

    Per group, the ``(C/G, E/G)`` channel block is transposed and the kernel flipped on every axis, so
    that ``conv(X, V^-, padding=k//2, groups=G) == conv_transpose(X, V, padding=k//2, groups=G)``.
    """
    c, e_per_group, *kernel = filters.shape
    spatial = tuple(range(2, filters.dim()))
    blocks = filters.reshape(groups, c // groups, e_per_group, *kernel).transpose(1, 2)
    return blocks.reshape(groups * e_per_group, c // groups, *kernel).flip(spatial)


def _filters_from_adjoint(adjoint: torch.Tensor, groups: int) -> torch.Tensor:
    """The inverse of :func:`adjoint_filters` (a permutation, so it also maps gradients back)."""
    e, c_per_group, *kernel = adjoint.shape
    spatial = tuple(range(2, adjoint.dim()))
    blocks = adjoint.flip(spatial).reshape(groups, e // groups, c_per_group, *kernel).transpose(1, 2)
    return blocks.reshape(groups * c_per_group, e // groups, *kernel)


# channels whose sources one row of K's channel sum covers (see Operators.correlate)
_SUMMED_CHANNELS = 8


class Operators:
    """``K``, ``A`` and the filter gradient for one filter, in one compute dtype and layout.

    In the channels-last layout ``A`` runs as a convolution with ``V^-`` (on the CPU that form is
    several times faster than ``conv_transpose``, and so is its weight gradient); in the inputs' own
    layout it runs as ``conv_transpose`` with ``V``, the very kernels of the naive composition.
    """

    def __init__(self, filters: torch.Tensor, groups: int, dtype: torch.dtype,
                 layout: Optional[torch.memory_format]):
        self.filters = filters.to(dtype)
        self.groups, self.dtype, self.layout = groups, dtype, layout
        self.kernel = tuple(filters.shape[2:])
        self.padding = [k // 2 for k in self.kernel]
        self.conv, self.conv_t = CONV_FN[len(self.kernel)], CONV_TRANSPOSED_FN[len(self.kernel)]
        self.flipped = layout is not None
        self.adjoint = adjoint_filters(self.filters, groups) if self.flipped else None
        # With one observed channel per group (G = C, the paper's setting) K is a depthwise convolution
        # over the R*C sources followed by a sum over each channel's R sources; in the channels-last layout
        # that form is the cheap one on the CPU.
        depthwise = self.flipped and groups == filters.shape[0]
        self.depthwise = self.filters.reshape(-1, 1, *self.kernel) if depthwise else None

    def prepare(self, tensor: torch.Tensor) -> Tuple[torch.Tensor, bool]:
        """Upcast to the compute dtype and, on the channels-last path, change the layout (both exact).

        Also says whether the result is a new tensor, which may then be overwritten in place.
        """
        copied = tensor.dtype != self.dtype or (
            self.layout is not None and not tensor.is_contiguous(memory_format=self.layout))
        prepared = tensor.to(self.dtype)
        if self.layout is not None:
            prepared = prepared.contiguous(memory_format=self.layout)
        return prepared, copied

    def correlate(self, source: torch.Tensor) -> torch.Tensor:  # K: (B, E, *S) -> (B, C, *S)
        if self.depthwise is None:
            return self.conv(source, self.filters, padding=self.padding, groups=self.groups)
        terms = self.conv(source, self.depthwise, padding=self.padding, groups=source.shape[1])
        batch, sources, *spatial = terms.shape
        per_channel = sources // self.groups
        # The sum over each channel's R adjacent channels-last entries, as a matrix product with a block of
        # ones per channel for several channels at once: on the CPU it runs several times faster than
        # .sum(-1) or a matrix-vector product over rows of R (docs/performance.md).
        channels = _SUMMED_CHANNELS if self.groups % _SUMMED_CHANNELS == 0 else 1
        ones = torch.ones(per_channel, 1, dtype=terms.dtype, device=terms.device)
        block = torch.block_diag(*[ones] * channels)
        sums = terms.movedim(1, -1).reshape(-1, channels * per_channel) @ block
        return sums.reshape(batch, *spatial, self.groups).movedim(-1, 1)

    def adjoint_of(self, observed: torch.Tensor, plus: Optional[float] = None) -> torch.Tensor:
        """``A(observed)``: (B, C, *S) -> (B, E, *S); with ``plus``, ``A(observed) + plus`` as the
        convolution's bias (one pass over the E-channel output instead of two)."""
        bias = None if plus is None else torch.full((self.filters.shape[1] * self.groups,), plus,
                                                    dtype=observed.dtype, device=observed.device)
        if self.flipped:
            return self.conv(observed, self.adjoint, bias, padding=self.padding, groups=self.groups)
        return self.conv_t(observed, self.filters, bias, padding=self.padding, groups=self.groups)

    def _weight_grad(self, grad, inputs, weight, transposed: bool) -> torch.Tensor:
        ones, zeros = [1] * len(self.kernel), [0] * len(self.kernel)
        return torch.ops.aten.convolution_backward(grad, inputs, weight, None, ones, self.padding, ones, transposed,
                                                   zeros, self.groups, [False, True, False])[1]

    def filter_grad_of_adjoint(self, observed: torch.Tensor, grad: torch.Tensor) -> torch.Tensor:
        """d<grad, A_V(observed)>, observed ``(B, C, *S)``, grad ``(B, E, *S)``; see :meth:`filter_grad`."""
        if self.flipped:
            return self._weight_grad(grad, observed, self.adjoint, False)
        return self._weight_grad(grad, observed, self.filters, True)

    def filter_grad_of_correlation(self, source: torch.Tensor, grad: torch.Tensor) -> torch.Tensor:
        """d<grad, K_V(source)>, source ``(B, E, *S)``, grad ``(B, C, *S)``; see :meth:`filter_grad`."""
        if self.flipped:  # <grad, K_V(S)> = <A_V(grad), S>: the cheap form
            return self.filter_grad_of_adjoint(grad, source)
        return self._weight_grad(grad, source, self.filters, False)

    def filter_grad(self, total: torch.Tensor) -> torch.Tensor:
        """The sum of the ``filter_grad_of_*`` terms as a gradient for ``V`` (they are for ``V^-`` when flipped)."""
        return _filters_from_adjoint(total, self.groups) if self.flipped else total


class _CheapFormStencil(torch.autograd.Function):
    """``K(tensor)`` or ``A(tensor)`` in the channels-last layout's cheap forms, differentiable.

    Autograd's own backward of these convolutions runs the CPU's slow grouped ``convolution_backward``
    for the input gradient; here it is the adjoint operator's forward (``A`` for ``K``, ``K`` for ``A``),
    and the filter gradient takes the ``V^-`` form, as in :func:`update_backward`.
    """

    @staticmethod
    def forward(ctx, tensor, filters, groups, layout, adjoint: bool):
        ops = Operators(filters, groups, filters.dtype, layout)
        ctx.save_for_backward(tensor, filters)
        ctx.groups, ctx.layout, ctx.adjoint = groups, layout, adjoint
        return ops.adjoint_of(tensor) if adjoint else ops.correlate(tensor)

    @staticmethod
    def backward(ctx, grad):
        tensor, filters = ctx.saved_tensors
        ops = Operators(filters, ctx.groups, filters.dtype, ctx.layout)
        grad = grad.contiguous(memory_format=ctx.layout)
        grad_tensor = grad_filters = None
        if ctx.needs_input_grad[0]:
            grad_tensor = ops.correlate(grad) if ctx.adjoint else ops.adjoint_of(grad)
        if ctx.needs_input_grad[1]:
            terms = ops.filter_grad_of_adjoint(tensor, grad) if ctx.adjoint else \
                ops.filter_grad_of_correlation(tensor, grad)
            grad_filters = ops.filter_grad(terms)
        return grad_tensor, grad_filters, None, None, None


class _UpdateStep(torch.autograd.Function):
    """``S * (A(x) + eps) / (A(K(S)) + eps)`` from ``S``, ``A(x)`` and ``A(K(S))``, with the elementwise backward
    of the module docstring (``u = g S / D``, ``dL/dS = g q``, ``dL/dN = u``, ``dL/dD = -u q``) in three
    buffers, where autograd's ``mul``/``div``/``add`` chain allocates about twice as many on the CPU."""

    @staticmethod
    def forward(ctx, source, adjoint_x, adjoint_reconstruction, eps: float):
        numerator, denominator = adjoint_x + eps, adjoint_reconstruction + eps
        ctx.save_for_backward(source, numerator, denominator)
        return (source * numerator).div_(denominator)

    @staticmethod
    def backward(ctx, grad):
        source, numerator, denominator = ctx.saved_tensors
        scaled = (grad * source).div_(denominator)  # u
        grad_source = (grad * numerator).div_(denominator)  # g q
        grad_denominator = (scaled * numerator).div_(denominator).neg_()  # -u q
        return grad_source, scaled, grad_denominator, None


def update_step(source: torch.Tensor, adjoint_x: torch.Tensor, adjoint_reconstruction: torch.Tensor,
                eps: float) -> torch.Tensor:
    """One update step, differentiable, with :class:`_UpdateStep`'s elementwise backward."""
    return _UpdateStep.apply(source, adjoint_x, adjoint_reconstruction, eps)


def differentiable_operators(filters: torch.Tensor, groups: int, dtype: torch.dtype,
                             layout: Optional[torch.memory_format]) -> Tuple[Callable, Callable]:
    """``(K, A)`` for ``filters`` in ``dtype`` and ``layout``, as functions autograd differentiates: the
    plain ``conv``/``conv_transpose`` in the operands' layout (``None``: the naive composition, twice
    differentiable), the cheap forms with their cheap backward (:class:`_CheapFormStencil`) channels-last."""
    if layout is None:
        ops = Operators(filters, groups, dtype, None)
        return ops.correlate, ops.adjoint_of
    filters = filters.to(dtype)
    return (lambda s: _CheapFormStencil.apply(s, filters, groups, layout, False),
            lambda x: _CheapFormStencil.apply(x, filters, groups, layout, True))


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
            current, owned = ops.prepare(source)
            first_reconstruction = None
            for step in range(iterations):
                reconstruction = ops.correlate(current)
                if step == 0:
                    first_reconstruction = reconstruction
                denominator = ops.adjoint_of(reconstruction, eps)
                del reconstruction
                # (S * N) / D as the naive composition computes it (N * S == S * N exactly)
                if step == iterations - 1:  # N is dead after the last update: reuse its buffer
                    current = numerator.mul_(current).div_(denominator)
                elif owned:
                    current = current.mul_(numerator).div_(denominator)
                else:
                    current, owned = (current * numerator).div_(denominator), True
                del denominator
            output = current.contiguous(memory_format=memory_format_of(source))
        ctx.save_for_backward(x, source, filters, first_reconstruction)
        ctx.groups, ctx.eps, ctx.iterations, ctx.layout, ctx.dtype = groups, eps, iterations, layout, dtype
        return output

    @staticmethod
    def backward(ctx, grad_output: torch.Tensor):
        if torch.is_grad_enabled():
            raise RuntimeError("nonnegative_deconvolution: this path has a hand-written backward and no double "
                               "backward (create_graph=True); use implementation='naive' for higher derivatives")
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


def update_backward(ops: Operators, observed: torch.Tensor, source: torch.Tensor,
                    first_reconstruction: Optional[torch.Tensor], grad: torch.Tensor, eps: float, iterations: int,
                    need_x: bool = True, need_source: bool = True, need_filters: bool = True):
    """Gradients of ``S^(iterations)`` for ``X`` (``observed``), ``S0`` (``source``) and ``V`` (see the module
    docstring), all operands already in ``ops``' dtype and layout; ``None`` for a gradient not asked for.

    ``first_reconstruction`` is ``K(S0)`` when the caller kept it, else ``None`` (recomputed here).
    """
    numerator = ops.adjoint_of(observed, eps)
    sources = [source]
    reconstructions = [ops.correlate(source) if first_reconstruction is None else first_reconstruction]
    for _ in range(iterations - 1):  # recompute S_1 .. S_{T-1}
        denominator = ops.adjoint_of(reconstructions[-1], eps)
        sources.append((sources[-1] * numerator).div_(denominator))
        del denominator
        reconstructions.append(ops.correlate(sources[-1]))
    grad_numerator = grad_filters_total = grad_x = None

    def accumulate(total, term):
        return term if total is None else total.add_(term)

    # Buffers are released as early as the math allows: for one update at most three E-channel
    # buffers live at once besides the saved tensors and the incoming gradient.
    for step in reversed(range(iterations)):
        current, reconstruction = sources.pop(), reconstructions.pop()
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
