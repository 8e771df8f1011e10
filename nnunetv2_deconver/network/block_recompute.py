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
  convolution); ``fc2`` is not run again, its three gradients come from ``convolution_backward``.

Forward and backward both run on groups of samples (``CHUNK_BYTES``), so that the workspace of the
widest layers (R*C and alpha*C channels) at the full-resolution stage, where the training peak sits, is
that of a group rather than of the batch.

The recomputed values are bit-identical to the forward's (the same operators on the same inputs), so
the gradients are those of plain autograd. Saved per block: ``x`` and ``z``, ``2 C`` values per voxel.
Double backward is not supported (a backward asked to build a graph raises a RuntimeError); the block's
plain path (``DeconverBlock.recompute = False``) is twice differentiable with the naive NDC.
"""
from typing import Optional

import torch
import torch.nn.functional as F

from nnunetv2_deconver.network.layout import to_layout
from nnunetv2_deconver.ops.by_dimension import CHANNELS_LAST, CONV_FN
from nnunetv2_deconver.ops.ndc_autograd import _Operators, memory_format_of, update_backward
from nnunetv2_deconver.ops.ndc_dispatch import select_implementation

__all__ = ["PreNormMixer", "PreNormMlp", "CHUNK_BYTES"]

# Forward and backward run on groups of samples whose widest buffer stays within this many bytes
# (4 = the paper's R and alpha).
CHUNK_BYTES, WIDEST_RATIO = 32 * 2 ** 20, 4


def _refuse_double_backward() -> None:
    if torch.is_grad_enabled():
        raise RuntimeError("Deconver block: the recomputing backward has no double backward (create_graph=True); "
                           "set DeconverBlock.recompute = False and force_implementation('naive') for higher "
                           "derivatives")


def _leaf(tensor: torch.Tensor, needed: bool) -> torch.Tensor:
    return tensor.detach().requires_grad_(needed)


def _pointwise_weight_grad(grad: torch.Tensor, inputs: torch.Tensor, weight: torch.Tensor, bias: bool):
    """``(dL/dinput, dL/dweight, dL/dbias)`` of a 1x1 convolution with stride 1 (``None`` where not asked)."""
    dim = weight.dim() - 2
    ones, zeros = [1] * dim, [0] * dim
    return torch.ops.aten.convolution_backward(grad, inputs, weight, [weight.shape[0]] if bias else None, ones,
                                               zeros, ones, False, zeros, 1, [True, True, bias])


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
        return _forward_in_sample_groups(x, lambda part: mixer(norm(part)))

    @staticmethod
    def backward(ctx, grad_output):
        _refuse_double_backward()
        x, = ctx.saved_tensors
        grads = _in_sample_chunks(x, grad_output, lambda x, g: PreNormMixer._gradients(ctx, x, g))
        return (grads[0], None, None, *grads[1:])

    @staticmethod
    def _gradients(ctx, x, grad_output):
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
                grad_w_out = _pointwise_weight_grad(grad, update, w_out.detach(), False)[1]

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
        return _forward_in_sample_groups(z, lambda part: mlp(norm(part)))

    @staticmethod
    def backward(ctx, grad_output):
        _refuse_double_backward()
        z, = ctx.saved_tensors
        grads = _in_sample_chunks(z, grad_output, lambda z, g: PreNormMlp._gradients(ctx, z, g))
        return (grads[0], None, None, *grads[1:])

    @staticmethod
    def _gradients(ctx, z, grad_output):
        needs = ctx.needs_input_grad
        conv = CONV_FN[z.dim() - 2]
        w1, b1 = _leaf(ctx.mlp.fc1.weight, needs[3]), _leaf(ctx.mlp.fc1.bias, needs[4])
        with torch.enable_grad():
            leaf_z = _leaf(z, needs[0])
            hidden = ctx.mlp.act(conv(ctx.norm(leaf_z), w1, b1))
        grad_hidden, grad_w2, grad_b2 = _pointwise_weight_grad(grad_output, hidden.detach(),
                                                               ctx.mlp.fc2.weight.detach(), True)
        grads = _grads_of_leaves((hidden,), (grad_hidden,), [leaf_z, w1, b1])
        return (*grads, grad_w2 if needs[5] else None, grad_b2 if needs[6] else None)


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
