"""Recomputation regions: how a Deconver block keeps little for backward, on every path.

A pre-norm block computes ``z = x + mixer(norm1(x))`` and ``y = z + mlp(norm2(z))``. Plain autograd with the
memory-lean NDC keeps ``(6 + 2 R + 2 alpha) C`` values per voxel of each block for backward, 22 C at the paper's
R = alpha = 4 (norm inputs and outputs, the ReLU output, the source ``S0`` (R*C), ``K(S0)``, the NDC output
(R*C), the MLP's hidden layer before and after GELU (alpha*C each); tested).

Here each half runs in *regions* under non-reentrant ``torch.utils.checkpoint``: a region keeps only its
input (``x``, then ``z``: one tensor shared by all regions of a half) and is run again in backward, where
autograd differentiates the recomputed ops. This is PyTorch's own mechanism, so the same code serves eager
training, autocast (checkpoint records and restores the autocast state) and ``torch.compile`` (dynamo
traces checkpoint regions and inductor's partitioner recomputes them instead of saving their insides).
Saved per block: ``x`` and ``z``, ``2 C`` values per voxel.

A region covers a group of samples and, where one sample's widest map is larger than the region budget
(:func:`region_bytes`), a chunk of channels: every operation of a half acts on each sample alone (instance
norm, pointwise and stencil convolutions), and with whole NDC groups (``G = C``: one observed channel and
its R sources) or whole MLP hidden channels a chunk's contribution to the half's output is a sum term
(``W_out`` columns times the chunk's update; ``fc2`` columns times the chunk's hidden layer). The half's
output is the bias plus the sum of its chunks' terms, concatenated over sample groups: the same math in
another summation order. So backward materialises one region at a time, and the transient workspace of
the widest layers at the full-resolution stage is a region's rather than the batch's. Each region
recomputes the C-channel norm and, for the mixer, the C -> C projection that all its chunks read.

Inside a region the NDC runs as plain differentiable operations (``recomputed=True``, see
:meth:`nnunetv2_deconver.ops.ndc.NDC.forward`): the checkpoint frees what they keep, so the backward does not
recompute the update's intermediates a second time, as the memory-lean NDC functions would.
"""
from typing import Callable, List, Optional, Tuple

import torch
from torch.utils.checkpoint import checkpoint

from nnunetv2_deconver.ops import memory_format_of, to_layout

__all__ = ["REGION_BYTES", "region_bytes", "regions", "run_in_regions"]

# The widest map of a region (R*C sources or alpha*C hidden channels of its samples, fp32) stays within
# this many bytes, per device type; docs/performance.md has the measurements that chose them.
REGION_BYTES = {"cpu": 16 * 2 ** 20, "cuda": 64 * 2 ** 20}
_OTHER_DEVICES = 64 * 2 ** 20

Region = Tuple[int, int, Optional[Tuple[int, ...]]]  # samples [s0, s1) and a chunk (None: all channels)


def region_bytes(device_type: str) -> int:
    return REGION_BYTES.get(device_type, _OTHER_DEVICES)


def _vector_friendly(size: int, width: int) -> int:
    """``size`` units of ``width`` channels, rounded down so that a chunk holds a multiple of 16 channels
    where it holds at least 16: oneDNN runs odd channel counts several times slower."""
    return max(1, (size * width) // 16 * 16 // width) if size * width >= 16 and 16 % width == 0 else size


def regions(x: torch.Tensor, units: int, unit_width: int, chunk_of: Callable[[int, int], tuple],
            budget: Optional[int] = None) -> List[Region]:
    """Regions for a half whose widest map has ``units`` units of ``unit_width`` channels (NDC groups of
    R*C/G sources, hidden channels of 1), fp32, on ``x``'s voxels: groups of whole samples where a sample's
    map fits ``budget`` (default :func:`region_bytes`), else one sample and chunks of units, whose
    ``chunk_of(u0, u1)`` each region carries."""
    budget = region_bytes(x.device.type) if budget is None else budget
    samples, voxels = x.shape[0], x[0, 0].numel()
    unit_bytes = unit_width * voxels * 4
    per_sample = units * unit_bytes
    if per_sample <= budget:
        size = max(1, budget // max(per_sample, 1))
        return [(s, min(s + size, samples), None) for s in range(0, samples, size)]
    size = _vector_friendly(max(1, budget // max(unit_bytes, 1)), unit_width)
    chunks = [chunk_of(u, min(u + size, units)) for u in range(0, units, size)]
    return [(s, s + 1, chunk) for s in range(samples) for chunk in chunks]


def run_in_regions(head: Callable[[torch.Tensor], torch.Tensor], term: Callable[..., torch.Tensor],
                   bias: torch.Tensor, x: torch.Tensor, region_list: List[Region]) -> torch.Tensor:
    """``term(head(x), None)`` over ``region_list``, in ``x``'s layout.

    ``head`` is the C-channel part all chunks of a sample group read (the norm, and for the mixer ``h``);
    ``term(shared, chunk)`` the rest: the whole half's output for ``chunk`` ``None``, else the chunk's term
    without ``bias``. A sample group is one checkpoint that keeps only its input; with several chunks, each
    chunk is a checkpoint nested in it that keeps only ``shared`` while the group's backward runs, so that
    ``head`` runs once per group and pass. The sample groups are one ``split`` of ``x``, whose backward
    concatenates their gradients once (a slice per region would zero-fill a whole batch's gradient for each).
    """
    layout = memory_format_of(x)
    bounds = list(dict.fromkeys((s0, s1) for s0, s1, _ in region_list))
    chunks = [chunk for s0, s1, chunk in region_list if (s0, s1) == bounds[0]]

    def group(part: torch.Tensor) -> torch.Tensor:
        shared = head(part)
        if chunks == [None]:
            out = term(shared, None)
        else:
            terms = [checkpoint(term, shared, chunk, use_reentrant=False) for chunk in chunks]
            out = sum(terms[1:], terms[0]).add_(bias.reshape((1, -1) + (1,) * (x.dim() - 2)).to(terms[0].dtype))
        return to_layout(out, layout)

    if len(bounds) == 1:
        return checkpoint(group, x, use_reentrant=False)
    parts = x.split([s1 - s0 for s0, s1 in bounds])
    return torch.cat([checkpoint(group, part, use_reentrant=False) for part in parts])
