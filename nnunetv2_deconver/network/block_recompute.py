"""Selective recomputation for the two halves of a Deconver block: exact gradients, a fraction of the memory.

A pre-norm block computes ``z = x + mixer(norm1(x))`` and ``y = z + mlp(norm2(z))``. Plain autograd keeps
about 22 C values per voxel of each block for backward (norm inputs and outputs, the ReLU output, the
source ``S0`` (R*C), ``K(S0)``, the NDC output (R*C), the MLP's hidden layer twice (alpha*C each)).

Here each half is one autograd function that keeps only its input (C values per voxel):

* :class:`PreNormMixer` keeps ``x``. Backward recomputes ``norm1(x)``, ``h = relu(W_in n)``,
  ``S0 = relu(W_p h + b_p)`` (two 1x1 convolutions) and ``K(S0)`` (one stencil); the NDC backward
  recomputes ``A(h)`` and ``A(K(S0))`` as it always does, and the NDC output that ``W_out``'s gradient
  needs is formed from those same ``N`` and ``D`` (one elementwise product), so the update itself is not
  run again.
* :class:`PreNormMlp` keeps ``z``. Backward recomputes ``norm2(z)`` and ``GELU(fc1(.))`` (one 1x1
  convolution); ``fc2`` is not run again, its three gradients come from ``pointwise_backward``
  (``network/layout.py``: a batched matrix product on default-layout CPU maps, else ``convolution_backward``).

Forward and backward both run on groups of samples (``CHUNK_BYTES``), so that the workspace of the
widest layers (R*C and alpha*C channels) at the full-resolution stage, where the training peak sits, is
that of a group rather than of the batch. Where one sample's R*C-channel map is still larger than
``CHANNEL_CHUNK_BYTES``, the mixer's part between ``h`` and the NDC output runs on groups of NDC channel
groups (:func:`_channel_chunks`): observed channels ``[c0, c1)`` and their sources ``[e0, e1)`` need only
``h[:, c0:c1]``, ``h`` itself and the rows ``[e0, e1)`` of ``W_p``, ``b_p``; ``W_out``'s columns
``[e0, e1)`` take that chunk's update, so the output and ``dL/dh`` are sums over chunks and the chunk's
parameter gradients are slices. The same math in another summation order: values agree with the
unchunked path to rounding (not bit for bit).

The recomputed values are bit-identical to the forward's (the same operators on the same inputs), so
the gradients are those of plain autograd. Saved per block: ``x`` and ``z``, ``2 C`` values per voxel.
Double backward is not supported (a backward asked to build a graph raises a RuntimeError); the block's
plain path (``DeconverBlock.recompute = False``) is twice differentiable with the naive NDC.
"""
from typing import Optional

import torch
import torch.nn.functional as F

from nnunetv2_deconver.network.layout import pointwise, pointwise_backward, to_layout
from nnunetv2_deconver.ops.by_dimension import CHANNELS_LAST, CONV_FN
from nnunetv2_deconver.ops.ndc_autograd import _Operators, memory_format_of, update_backward
from nnunetv2_deconver.ops.ndc_dispatch import select_implementation

__all__ = ["PreNormMixer", "PreNormMlp", "CHUNK_BYTES", "CHANNEL_CHUNK_BYTES"]

# Forward and backward run on groups of samples whose widest buffer stays within this many bytes
# (4 = the paper's R and alpha).
CHUNK_BYTES, WIDEST_RATIO = 32 * 2 ** 20, 4
# The mixer's R*C-channel work runs on channel chunks whose source map (per group of samples) stays within
# this many bytes; one chunk (the plain code) where the whole map does.
CHANNEL_CHUNK_BYTES = 16 * 2 ** 20


def _refuse_double_backward() -> None:
    if torch.is_grad_enabled():
        raise RuntimeError("Deconver block: the recomputing backward has no double backward (create_graph=True); "
                           "set DeconverBlock.recompute = False and force_implementation('naive') for higher "
                           "derivatives")


def _leaf(tensor: torch.Tensor, needed: bool) -> torch.Tensor:
    return tensor.detach().requires_grad_(needed)


_pointwise_weight_grad = pointwise_backward  # (dL/dinput, dL/dweight, dL/dbias) of a 1x1 convolution


def _grads_of_leaves(roots, root_grads, leaves) -> list:
    """``d<roots, root_grads>/d leaf`` for each leaf that requires grad, ``None`` for the others."""
    wanted = [leaf for leaf in leaves if leaf.requires_grad]
    found = iter(torch.autograd.grad(roots, wanted, root_grads, allow_unused=True)) if wanted else iter(())
    return [next(found) if leaf.requires_grad else None for leaf in leaves]


def _group_size(tensor: torch.Tensor) -> int:
    """Samples per group: one widest (``WIDEST_RATIO * C``-channel) buffer of the group within ``CHUNK_BYTES``."""
    per_sample = WIDEST_RATIO * tensor[0].numel() * tensor.element_size()
    return max(1, CHUNK_BYTES // max(per_sample, 1))


def _forward_in_sample_groups(x: torch.Tensor, function) -> torch.Tensor:
    """``function(x)`` for a function acting on each sample alone, run on groups of samples (see
    :func:`_in_sample_chunks`): the forward's workspace shrinks with the group, the output is the same."""
    size = _group_size(x)
    if size >= x.shape[0]:
        return function(x)
    return torch.cat([function(x[start:start + size]) for start in range(0, x.shape[0], size)])


def _in_sample_chunks(saved: torch.Tensor, grad_output: torch.Tensor, gradients) -> list:
    """``gradients(saved, grad_output)`` -> ``[dL/dsaved, *parameter gradients]``, run on groups of samples.

    Every operation of a block half acts on each sample on its own (instance norm, pointwise and stencil
    convolutions), so the input gradient is the concatenation of the groups' and each parameter gradient
    their sum. Groups are as large as keeps one widest (``WIDEST_RATIO * C``-channel) recomputed buffer
    within ``CHUNK_BYTES``: the backward's workspace, several such buffers, shrinks with the group.
    """
    size = _group_size(saved)
    if size >= saved.shape[0]:
        grads = list(gradients(saved, grad_output))
        grads[0] = None if grads[0] is None else grads[0].contiguous(memory_format=memory_format_of(saved))
        return grads
    totals = None
    for start in range(0, saved.shape[0], size):
        part = gradients(saved[start:start + size], grad_output[start:start + size])
        if totals is None:
            totals = [[part[0]]] + list(part[1:])
        else:
            totals[0].append(part[0])
            totals[1:] = [t if p is None else t.add_(p) for t, p in zip(totals[1:], part[1:])]
    inputs = None if totals[0][0] is None else torch.cat(totals[0]).contiguous(memory_format=memory_format_of(saved))
    return [inputs] + totals[1:]


class PreNormMixer(torch.autograd.Function):
    """``mixer(norm(x))`` for a :class:`~nnunetv2_deconver.network.blocks.DeconvMixer`; saves only ``x``.

    ``x``: ``(B, C, *spatial)``; output ``(B, C, *spatial)`` in ``x``'s layout. The parameters are passed
    as inputs (in the order of :meth:`inputs_of`) so that autograd routes their gradients here.
    """

    @staticmethod
    def inputs_of(mixer) -> tuple:
        return (mixer.project_in.weight, mixer.ndc.project.weight, mixer.ndc.project.bias, mixer.ndc.filters,
                mixer.project_out.weight, mixer.project_out.bias)

    @staticmethod
    def forward(ctx, x, norm, mixer, *parameters):
        ctx.norm, ctx.mixer = norm, mixer
        ctx.implementation = select_implementation(x)
        ctx.save_for_backward(x)
        return _forward_in_sample_groups(x, lambda part: _mixer_forward(mixer, norm(part), ctx.implementation))

    @staticmethod
    def backward(ctx, grad_output):
        _refuse_double_backward()
        x, = ctx.saved_tensors
        grads = _in_sample_chunks(x, grad_output, lambda x, g: PreNormMixer._gradients(ctx, x, g))
        return (grads[0], None, None, *grads[1:])

    @staticmethod
    def _gradients(ctx, x, grad_output):
        if len(_channel_chunks(ctx.mixer.ndc, x)) > 1:
            return _chunked_mixer_gradients(ctx, x, grad_output)
        mixer, ndc = ctx.mixer, ctx.mixer.ndc
        needs = ctx.needs_input_grad
        conv = CONV_FN[x.dim() - 2]
        layout = CHANNELS_LAST.get(x.dim() - 2) if ctx.implementation == "channels_last" else None
        w_in, w_p, b_p, filters, w_out = (_leaf(p, needed) for p, needed in zip(
            PreNormMixer.inputs_of(mixer)[:5], needs[3:8]))
        with torch.enable_grad():
            leaf_x = _leaf(x, needs[0])
            normed = ctx.norm(leaf_x)
            inner = normed if layout is None else to_layout(normed, layout)
            del normed
            observed = F.relu(conv(inner, w_in))
            source = F.relu(conv(observed, w_p, b_p))
            positive_filters = F.relu(filters)
        grad = grad_output if layout is None else grad_output.contiguous(memory_format=layout)
        # project_out: dL/d(NDC output) needs only W_out; its weight gradient waits for the recomputed output
        grad_update = conv(grad, w_out.detach().transpose(0, 1))
        grad_w_out = grad_b_out = None
        if needs[8]:
            grad_b_out = grad.sum(dim=[d for d in range(grad.dim()) if d != 1])

        def project_out_weight_grad(update: torch.Tensor) -> None:
            nonlocal grad_w_out
            if needs[7]:
                grad_w_out = _pointwise_weight_grad(grad, update, w_out.detach(), False, False)[1]

        dtype = torch.promote_types(torch.promote_types(observed.dtype, source.dtype), torch.float32)
        ops = _Operators(positive_filters.detach(), ndc.groups, dtype, layout)
        grad_observed, grad_source, grad_filters = update_backward(
            ops, ops.prepare(observed.detach())[0], ops.prepare(source.detach())[0], None,
            ops.prepare(grad_update)[0], ndc.eps, ndc.iterations, on_output=project_out_weight_grad)
        grad_update = grad = None  # free both before the parameter gradients below
        roots = (observed, source, positive_filters)
        root_grads = (grad_observed.to(observed.dtype), grad_source.to(source.dtype),
                      grad_filters.to(positive_filters.dtype))
        del grad_observed, grad_source
        grads = _grads_of_leaves(roots, root_grads, [leaf_x, w_in, w_p, b_p, filters])
        return (*grads, grad_w_out, grad_b_out)


def _vector_friendly(size: int, width: int) -> int:
    """``size`` units of ``width`` channels, rounded down so that a chunk holds a multiple of 16 channels
    where it holds at least 16: oneDNN runs odd channel counts several times slower."""
    return max(1, (size * width) // 16 * 16 // width) if size * width >= 16 and 16 % width == 0 else size


def _channel_chunks(ndc, x: torch.Tensor) -> list:
    """``[(c0, c1, e0, e1), ...]``: whole NDC groups per chunk, one chunk's source map of ``x``'s samples
    (in the update's compute dtype, at least fp32) within ``CHANNEL_CHUNK_BYTES``."""
    channels, groups = ndc.filters.shape[0], ndc.groups
    per_group_c, per_group_e = channels // groups, ndc.filters.shape[1]
    element = max(x.element_size(), 4)
    group_bytes = per_group_e * (x.numel() // max(x.shape[1], 1)) * element
    size = _vector_friendly(max(1, CHANNEL_CHUNK_BYTES // max(group_bytes, 1)), per_group_e)
    return [(g * per_group_c, min(g + size, groups) * per_group_c, g * per_group_e,
             min(g + size, groups) * per_group_e) for g in range(0, groups, size)]


def _mixer_layout(x: torch.Tensor, implementation: str):
    return CHANNELS_LAST.get(x.dim() - 2) if implementation == "channels_last" else None


def _mixer_forward(mixer, normed: torch.Tensor, implementation: str) -> torch.Tensor:
    """``mixer(normed)``; on channel chunks (see the module docstring) where there is more than one."""
    chunks = _channel_chunks(mixer.ndc, normed)
    if len(chunks) == 1:
        return mixer(normed)
    ndc, conv = mixer.ndc, CONV_FN[normed.dim() - 2]
    layout = _mixer_layout(normed, implementation)
    inner = normed if layout is None else normed.contiguous(memory_format=layout)
    observed = F.relu(conv(inner, mixer.project_in.weight))
    dtype = torch.promote_types(observed.dtype, torch.float32)
    positive_filters = F.relu(ndc.filters)
    out = None
    for c0, c1, e0, e1 in chunks:
        ops = _Operators(positive_filters[c0:c1], ndc.groups * (c1 - c0) // positive_filters.shape[0], dtype, layout)
        source = F.relu(conv(observed, ndc.project.weight[e0:e1], ndc.project.bias[e0:e1]))
        update = _update(ops, ops.prepare(observed[:, c0:c1])[0], ops.prepare(source)[0], ndc.eps, ndc.iterations)
        del source
        term = conv(update.to(observed.dtype), mixer.project_out.weight[:, e0:e1])
        out = term if out is None else out.add_(term)
    out = out.add_(mixer.project_out.bias.reshape(1, -1, *[1] * (out.dim() - 2)))
    return out.contiguous(memory_format=memory_format_of(normed))


def _update(ops: _Operators, observed: torch.Tensor, source: torch.Tensor, eps: float, iterations: int):
    """``S^(iterations)`` (eqs. 3, 7) as :class:`~nnunetv2_deconver.ops.ndc_autograd.RecomputedNDC` computes it."""
    numerator = ops.adjoint_of(observed).add_(eps)
    current = source
    for step in range(iterations):
        denominator = ops.adjoint_of(ops.correlate(current)).add_(eps)
        if step == iterations - 1:
            current = numerator.mul_(current).div_(denominator)
        else:
            current = (current * numerator).div_(denominator)
        del denominator
    return current


def _chunked_mixer_gradients(ctx, x, grad_output):
    """:meth:`PreNormMixer._gradients` on channel chunks: the NDC part, ``S0`` and ``W_out``'s weight
    gradient per chunk; ``dL/dh`` accumulated over chunks, then back through ``h = relu(W_in norm(x))``."""
    mixer, ndc = ctx.mixer, ctx.mixer.ndc
    needs = ctx.needs_input_grad
    conv = CONV_FN[x.dim() - 2]
    layout = _mixer_layout(x, ctx.implementation)
    w_in = _leaf(mixer.project_in.weight, needs[3])
    w_p, b_p, filters, w_out = (p.detach() for p in PreNormMixer.inputs_of(mixer)[1:5])
    with torch.enable_grad():
        leaf_x = _leaf(x, needs[0])
        normed = ctx.norm(leaf_x)
        inner = normed if layout is None else to_layout(normed, layout)
        del normed
        observed = F.relu(conv(inner, w_in))
    hidden = observed.detach()
    grad = grad_output if layout is None else grad_output.contiguous(memory_format=layout)
    grad_b_out = grad.sum(dim=[d for d in range(grad.dim()) if d != 1]) if needs[8] else None
    grad_hidden = torch.zeros_like(hidden)
    grad_w_p, grad_b_p, grad_filters, grad_w_out = (torch.zeros_like(p) for p in (w_p, b_p, filters, w_out))
    dtype = torch.promote_types(hidden.dtype, torch.float32)
    positive_filters = F.relu(filters)
    for c0, c1, e0, e1 in _channel_chunks(ndc, x):
        ops = _Operators(positive_filters[c0:c1], ndc.groups * (c1 - c0) // filters.shape[0], dtype, layout)
        source = F.relu(conv(hidden, w_p[e0:e1], b_p[e0:e1]))
        w_out_chunk = w_out[:, e0:e1].contiguous()
        grad_update = conv(grad, w_out_chunk.transpose(0, 1))

        def project_out_weight_grad(update: torch.Tensor, e0=e0, e1=e1, w_out_chunk=w_out_chunk) -> None:
            grad_w_out[:, e0:e1] = _pointwise_weight_grad(grad, update.to(hidden.dtype), w_out_chunk, False,
                                                           False)[1]

        grad_observed, grad_source, grad_positive = update_backward(
            ops, ops.prepare(hidden[:, c0:c1])[0], ops.prepare(source)[0], None, ops.prepare(grad_update)[0],
            ndc.eps, ndc.iterations, on_output=project_out_weight_grad)
        del grad_update
        grad_hidden[:, c0:c1] += grad_observed.to(hidden.dtype)
        del grad_observed
        grad_source = torch.ops.aten.threshold_backward(grad_source.to(source.dtype), source, 0)  # relu's
        del source
        grad_input, grad_w_p[e0:e1], grad_b_p[e0:e1] = _pointwise_weight_grad(grad_source, hidden, w_p[e0:e1], True)
        del grad_source
        grad_hidden += grad_input
        del grad_input
        grad_filters[c0:c1] = torch.ops.aten.threshold_backward(grad_positive.to(filters.dtype),
                                                                positive_filters[c0:c1], 0)
    grad = None
    grads = _grads_of_leaves((observed,), (grad_hidden,), [leaf_x, w_in])
    chunked = [grad_w_p, grad_b_p, grad_filters, grad_w_out]
    return (*grads, *[g if need else None for g, need in zip(chunked, needs[4:8])], grad_b_out)


class PreNormMlp(torch.autograd.Function):
    """``mlp(norm(z))`` for an :class:`~nnunetv2_deconver.network.blocks.Mlp`; saves only ``z``.

    ``z``: ``(B, C, *spatial)``; output ``(B, C, *spatial)``. Parameters as inputs, in the order of
    :meth:`inputs_of`.
    """

    @staticmethod
    def inputs_of(mlp) -> tuple:
        return mlp.fc1.weight, mlp.fc1.bias, mlp.fc2.weight, mlp.fc2.bias

    @staticmethod
    def forward(ctx, z, norm, mlp, *parameters):
        ctx.norm, ctx.mlp = norm, mlp
        ctx.save_for_backward(z)
        return _forward_in_sample_groups(z, lambda part: _mlp_forward(mlp, norm(part)))

    @staticmethod
    def backward(ctx, grad_output):
        _refuse_double_backward()
        z, = ctx.saved_tensors
        grads = _in_sample_chunks(z, grad_output, lambda z, g: PreNormMlp._gradients(ctx, z, g))
        return (grads[0], None, None, *grads[1:])

    @staticmethod
    def _gradients(ctx, z, grad_output):
        if len(_hidden_chunks(ctx.mlp, z)) > 1:
            return _chunked_mlp_gradients(ctx, z, grad_output)
        needs = ctx.needs_input_grad
        w1, b1 = _leaf(ctx.mlp.fc1.weight, needs[3]), _leaf(ctx.mlp.fc1.bias, needs[4])
        with torch.enable_grad():
            leaf_z = _leaf(z, needs[0])
            hidden = ctx.mlp.act(pointwise(ctx.norm(leaf_z), w1, b1))
        grad_hidden, grad_w2, grad_b2 = _pointwise_weight_grad(grad_output, hidden.detach(),
                                                               ctx.mlp.fc2.weight.detach(), True)
        grads = _grads_of_leaves((hidden,), (grad_hidden,), [leaf_z, w1, b1])
        return (*grads, grad_w2 if needs[5] else None, grad_b2 if needs[6] else None)


def _hidden_chunks(mlp, z: torch.Tensor) -> list:
    """``[(a0, a1), ...]``: the MLP's hidden channels in chunks whose map of ``z``'s samples stays within
    ``CHANNEL_CHUNK_BYTES``."""
    hidden = mlp.fc1.weight.shape[0]
    size = max(1, CHANNEL_CHUNK_BYTES // max((z.numel() // max(z.shape[1], 1)) * z.element_size(), 1))
    size = _vector_friendly(size, 1)
    return [(a, min(a + size, hidden)) for a in range(0, hidden, size)]


def _mlp_forward(mlp, normed: torch.Tensor) -> torch.Tensor:
    """``mlp(normed)``; on chunks of hidden channels (``fc2``'s output summed over them) where more than one."""
    chunks = _hidden_chunks(mlp, normed)
    if len(chunks) == 1:
        return mlp(normed)
    out = None
    for a0, a1 in chunks:
        hidden = mlp.act(pointwise(normed, mlp.fc1.weight[a0:a1], mlp.fc1.bias[a0:a1]))
        term = pointwise(hidden, mlp.fc2.weight[:, a0:a1])
        out = term if out is None else out.add_(term)
    return out.add_(mlp.fc2.bias.reshape(1, -1, *[1] * (out.dim() - 2)))


def _chunked_mlp_gradients(ctx, z, grad_output):
    """:meth:`PreNormMlp._gradients` on chunks of hidden channels; ``dL/dnorm(z)`` summed over them."""
    mlp, needs = ctx.mlp, ctx.needs_input_grad
    w1, b1, w2 = (p.detach() for p in PreNormMlp.inputs_of(mlp)[:3])
    with torch.enable_grad():
        leaf_z = _leaf(z, needs[0])
        normed = ctx.norm(leaf_z)
    inputs = normed.detach()
    grad_inputs = torch.zeros_like(inputs)
    grad_w1, grad_b1, grad_w2 = (torch.zeros_like(p) for p in (w1, b1, w2))
    for a0, a1 in _hidden_chunks(mlp, z):
        before = pointwise(inputs, w1[a0:a1], b1[a0:a1])
        w2_chunk = w2[:, a0:a1].contiguous()
        grad_hidden, grad_w2[:, a0:a1], _ = _pointwise_weight_grad(grad_output, mlp.act(before), w2_chunk, False)
        grad_before = torch.ops.aten.gelu_backward(grad_hidden, before, approximate=mlp.act.approximate)
        del grad_hidden, before
        grad_input, grad_w1[a0:a1], grad_b1[a0:a1] = _pointwise_weight_grad(grad_before, inputs, w1[a0:a1], True)
        del grad_before
        grad_inputs += grad_input
        del grad_input
    grad_z, = _grads_of_leaves((normed,), (grad_inputs,), [leaf_z])
    grad_b2 = grad_output.sum(dim=[d for d in range(grad_output.dim()) if d != 1]) if needs[6] else None
    return (grad_z, *[g if need else None for g, need in zip((grad_w1, grad_b1, grad_w2), needs[3:6])], grad_b2)


def selective_recompute_applies(x: torch.Tensor, forced: Optional[str]) -> bool:
    """Whether a block's training forward takes the recomputing functions for ``x``.

    Not when no gradient is recorded (inference), under ``torch.compile`` (which traces the plain graph
    and plans its own memory), under autocast (the functions' backward would run outside it), or when the
    naive NDC is forced (the twice-differentiable reference).
    """
    if not torch.is_grad_enabled() or forced == "naive":
        return False
    if torch.compiler.is_compiling():
        return False
    return not torch.is_autocast_enabled(x.device.type) if x.device.type != "meta" else True
