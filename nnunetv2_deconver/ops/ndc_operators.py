"""The NDC's two operators, ``K`` (E -> C) and its adjoint ``A`` (C -> E), in the forms each layout runs fast.

``K(S) = conv(S, V)`` is the grouped cross-correlation of eq. (1) and ``A`` its adjoint, the transposed
convolution with ``V`` or, equally, the convolution with the transposed, flipped filter ``V^-``
(:func:`adjoint_filters`). :class:`Operators` computes them and the filter's gradient terms for one
filter, dtype and layout; :func:`differentiable_operators` gives them as functions autograd
differentiates, and :func:`update_step` the update's elementwise step with a lean backward.
"""
from typing import Callable, Optional, Tuple

import torch

from nnunetv2_deconver.ops.by_dimension import CONV_FN, CONV_TRANSPOSED_FN

__all__ = ["Operators", "adjoint_filters", "differentiable_operators", "update_step"]


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

    In the channels-last layout ``A`` runs as a convolution with ``V^-`` (on the CPU that form is several
    times faster than ``conv_transpose``, and so is its weight gradient: docs/performance.md); in the inputs'
    own layout it runs as ``conv_transpose`` with ``V``, the very kernels of the naive composition.
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
