"""Activation memory of a training step on the compiled path, measured without computing anything.

nnU-Net trains on a GPU under autocast with ``torch.compile``: AOT autograd traces forward and backward into
one joint graph and inductor's partitioner (``min_cut_rematerialization_partition``) decides what the
forward keeps for backward and what the backward recomputes. :func:`compiled_step_memory` runs exactly that
tracing and partitioning on fake tensors (no data, no compute, no GPU) and reads two figures off the two
graphs:

* ``saved``: the bytes of the forward graph's outputs that go to the backward and are not graph inputs
  (parameters, the batch): the activations a training step holds from forward to backward;
* ``transient``: the backward graph's largest live set of its own intermediates (liveness in node order,
  each value freed after its last use, the saved tensors and incoming gradients not counted): what a
  recomputed region materialises at once, the workspace on top of ``saved``.

Both come from the partitioned graphs before inductor's scheduling, which may fuse and reuse buffers
further; the figures are those of the partitioner's plan. Autocast follows the traced device's op lists.
"""
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Callable, Iterator, Optional, Sequence

import torch

from nnunetv2_deconver.network.block_recompute import REGION_BYTES, region_bytes
from nnunetv2_deconver.ops import force_implementation, select_implementation

__all__ = ["CompiledMemory", "compiled_step_memory"]


@dataclass(frozen=True)
class CompiledMemory:
    saved: int  # bytes kept from forward to backward
    transient: int  # bytes of the backward's largest live set of intermediates


def _tensor_bytes(node) -> int:
    value = node.meta.get("val")
    if isinstance(value, torch.Tensor):
        return value.numel() * value.element_size()
    if isinstance(value, (tuple, list)):
        return sum(v.numel() * v.element_size() for v in value if isinstance(v, torch.Tensor))
    return 0


def _storage_root(node):
    """The node whose buffer ``node`` is a view of (itself if it is no view): a saved view keeps that alive."""
    while isinstance(getattr(node, "target", None), torch._ops.OpOverload) and node.target.is_view:
        node = node.args[0]
    return node


def _saved_bytes(forward: torch.fx.GraphModule, num_forward_outputs: int) -> int:
    outputs = next(n for n in forward.graph.nodes if n.op == "output").args[0]
    saved = [_storage_root(n) for n in outputs[num_forward_outputs:] if isinstance(n, torch.fx.Node)]
    return sum(_tensor_bytes(n) for n in dict.fromkeys(saved) if n.op != "placeholder")


def _peak_live_bytes(graph: torch.fx.Graph) -> int:
    nodes = list(graph.nodes)
    last_use = {}
    for index, node in enumerate(nodes):
        for used in node.all_input_nodes:
            last_use[used] = index
    live, peak = 0, 0
    for index, node in enumerate(nodes):
        if node.op not in ("placeholder", "output"):
            live += _tensor_bytes(node)
            peak = max(peak, live)
        for used in node.all_input_nodes:
            if last_use[used] == index and used.op != "placeholder":
                live -= _tensor_bytes(used)
    return peak


@contextmanager
def _choices_of(device_type: str) -> Iterator[None]:
    """Within, the network takes the device-dependent choices (NDC path, region sizes) of ``device_type``."""
    saved_budget = REGION_BYTES["cpu"]
    REGION_BYTES["cpu"] = region_bytes(device_type)
    try:
        with force_implementation(select_implementation(torch.empty(0, 0, 0, 0, device="meta"), device_type)
                                  if device_type != "cpu" else None):
            yield
    finally:
        REGION_BYTES["cpu"] = saved_budget


def compiled_step_memory(build: Callable[[], torch.nn.Module], input_shape: Sequence[int],
                         autocast_dtype: Optional[torch.dtype] = torch.float16,
                         device_type: str = "cuda") -> CompiledMemory:
    """Trace ``build()``'s training forward on a batch of ``input_shape`` through ``torch.compile``'s AOT
    autograd with inductor's partitioner, under autocast to ``autocast_dtype`` (``None``: fp32), on fake CPU
    tensors taking the choices the network makes on ``device_type``; return what the partitioned step keeps
    and what its backward materialises (module docstring).

    The default is the path nnU-Net trains on: the GPU's NDC path and region sizes under fp16 autocast
    (the CPU's autocast op lists, which cast convolutions and matrix products and keep norms in fp32 as
    CUDA's do; AOT autograd cannot trace fake CUDA tensors without a GPU). ``build`` is called inside the
    fake mode (its parameters are fake too). Graph breaks are refused (``fullgraph=True``): a tensor
    handed between two graphs would be counted by neither.
    """
    from torch._dynamo.backends.common import aot_autograd
    from torch._functorch.partitioners import min_cut_rematerialization_partition
    from torch._subclasses.fake_tensor import FakeTensorMode

    totals = {"saved": 0, "transient": 0}

    def partition(joint, joint_inputs, *, num_fwd_outputs, **kwargs):
        forward, backward = min_cut_rematerialization_partition(joint, joint_inputs,
                                                                num_fwd_outputs=num_fwd_outputs, **kwargs)
        totals["saved"] += _saved_bytes(forward, num_fwd_outputs)
        totals["transient"] = max(totals["transient"], _peak_live_bytes(backward.graph))
        return forward, backward

    backend = aot_autograd(fw_compiler=lambda gm, _: gm, bw_compiler=lambda gm, _: gm, partition_fn=partition)
    torch._dynamo.reset()
    try:
        with _choices_of(device_type), FakeTensorMode(), torch.autocast(
                "cpu", dtype=autocast_dtype or torch.float32, enabled=autocast_dtype is not None):
            network = build().train()
            torch.compile(network, backend=backend, fullgraph=True)(torch.randn(*input_shape))
    finally:
        torch._dynamo.reset()
    return CompiledMemory(totals["saved"], totals["transient"])
