"""The iteration every NDC path shares (eq. 3 over eq. 7), and the update as plain differentiable operations.

Each path computes ``S_{t+1} = S_t * (A(X) + eps) / (A(K(S_t)) + eps)`` with operators and buffers of its
own; :func:`run_updates` is the one loop that drives them, forward and, recomputing the intermediate
sources, backward.
"""
from typing import Callable, List, Optional, Tuple

import torch

from nnunetv2_deconver.ops.ndc_operators import Operators, differentiable_operators, update_step
from nnunetv2_deconver.ops.precision import autocast_disabled

__all__ = ["run_updates", "plain_update", "refuse_double_backward"]

Step = Callable[[int, torch.Tensor, torch.Tensor], torch.Tensor]


def run_updates(source: torch.Tensor, iterations: int, correlate: Callable[[torch.Tensor], torch.Tensor],
                step: Step, first_reconstruction: Optional[torch.Tensor] = None,
                states: Optional[List[Tuple[torch.Tensor, torch.Tensor]]] = None
                ) -> Tuple[Optional[torch.Tensor], torch.Tensor]:
    """``(S_iterations, K(S_0))`` from ``S_0 = source`` by ``S_{t+1} = step(t, S_t, K(S_t))``.

    ``correlate`` is the path's ``K`` and ``step`` its update given ``S_t`` and ``R_t = K(S_t)`` (free to
    overwrite buffers the path owns); ``first_reconstruction`` is ``K(S_0)`` where the caller kept it. With a
    list ``states`` (a backward recomputing the sources), the pairs ``(S_t, R_t)`` for every ``t`` are
    appended to it and the last update, which backward does not need, is not run: ``S_iterations`` is
    then ``None``.
    """
    current = source
    for t in range(iterations):
        reconstruction = first_reconstruction if t == 0 and first_reconstruction is not None \
            else correlate(current)
        if t == 0:
            first_reconstruction = reconstruction
        if states is not None:
            states.append((current, reconstruction))
            if t == iterations - 1:
                return None, first_reconstruction
        current = step(t, current, reconstruction)
        del reconstruction
    return current, first_reconstruction


def refuse_double_backward() -> None:
    """Raise the error of a hand-written backward asked to build a graph (``create_graph=True``)."""
    if torch.is_grad_enabled():
        raise RuntimeError("nonnegative_deconvolution: this path has a hand-written backward and no double "
                           "backward (create_graph=True); use implementation='naive' for higher derivatives")


def plain_update(x: torch.Tensor, source: torch.Tensor, filters: torch.Tensor, groups: int, eps: float,
                 iterations: int, layout: Optional[torch.memory_format] = None) -> torch.Tensor:
    """The update (eqs. 3, 7) as plain differentiable operations; autograd keeps every intermediate.

    ``layout`` ``None`` is the naive composition of ``conv``/``conv_transpose`` in the operands' layout (the
    reference, twice differentiable); a channels-last format computes in it with the CPU's cheap forms of
    ``K`` and ``A`` and their cheap backward (:func:`~nnunetv2_deconver.ops.ndc_operators.differentiable_operators`),
    for callers that recompute the update in backward themselves (a checkpoint region), where what autograd
    keeps is freed anyway. Runs in (at least) fp32, outside autocast: fp16 cannot hold eps and overflows
    in the ratio.
    """
    with autocast_disabled(x.device.type):
        dtype = torch.promote_types(torch.promote_types(x.dtype, source.dtype), torch.float32)
        prepare = Operators(filters, groups, dtype, layout).prepare
        correlate, adjoint = differentiable_operators(filters, groups, dtype, layout)
        adjoint_x = adjoint(prepare(x)[0])

        def step(_, current, reconstruction):
            if layout is None:
                return current * (adjoint_x + eps) / (adjoint(reconstruction) + eps)
            return update_step(current, adjoint_x, adjoint(reconstruction), eps)

        return run_updates(prepare(source)[0], iterations, correlate, step)[0]
