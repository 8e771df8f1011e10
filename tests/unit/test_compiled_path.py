"""The path nnU-Net trains on, on the CPU: the default network compiled by inductor under bf16 autocast
against eager fp32 (values, gradients, a few optimiser steps), and its traced activation memory."""
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from nnunetv2_deconver import Deconver
from nnunetv2_deconver.network import block_recompute
from nnunetv2_deconver.network.compiled_memory import compiled_step_memory

PLAN = dict(n_stages=3, features_per_stage=[8, 16, 32], conv_op=nn.Conv3d,
            kernel_sizes=[[1, 3, 3], [3, 3, 3], [3, 3, 3]], strides=[[1, 1, 1], [1, 2, 2], [2, 2, 2]])


def _network(**kwargs):
    torch.manual_seed(0)
    return Deconver(input_channels=1, num_classes=3, deep_supervision=True, **PLAN, **kwargs)


def _loss(outputs, target):
    return sum(F.cross_entropy(o.float(), F.interpolate(target, size=o.shape[2:]).long()[:, 0]) / 2 ** i
               for i, o in enumerate(outputs))


def _relative(a, b):
    return ((a.float() - b.float()).norm() / b.float().norm()).item()


@pytest.fixture(scope="module")
def batch():
    generator = torch.Generator().manual_seed(1)
    return torch.rand(2, 1, 4, 16, 16, generator=generator), torch.randint(0, 3, (2, 1, 4, 16, 16),
                                                                          generator=generator).float()


def _steps(network, x, target, compiled: bool, bf16: bool, steps: int = 3):
    """Losses of ``steps`` AdamW steps and the first step's gradient."""
    forward = torch.compile(network, backend="inductor") if compiled else network
    optimizer = torch.optim.AdamW(network.parameters(), lr=3e-3)
    losses, first_grad = [], None
    for _ in range(steps):
        optimizer.zero_grad()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss = _loss(forward(x), target)
        loss.backward()
        if first_grad is None:
            first_grad = torch.cat([p.grad.flatten() for p in network.parameters()])
        optimizer.step()
        losses.append(loss.item())
    return losses, first_grad


def test_inductor_bf16_training_tracks_eager_fp32(batch, monkeypatch):
    """The default network compiled by inductor under bf16 autocast, its blocks in several regions (samples
    and channel chunks): the first loss within 1% of eager fp32's, its gradient no further from eager fp32's
    than three times eager bf16 autocast's own distance, and two more AdamW steps within 3%."""
    # at 64 KiB the top stage's halves run in one region per sample and channel half, the middle stage's
    # in one per sample, the bottom's in one region (few regions: inductor's compile time grows with them)
    monkeypatch.setitem(block_recompute.REGION_BYTES, "cpu", 64 * 2 ** 10)
    x, target = batch
    losses, grad = _steps(_network(), x, target, compiled=False, bf16=False)
    _, eager_bf16_grad = _steps(_network(), x, target, compiled=False, bf16=True, steps=1)
    compiled_losses, compiled_grad = _steps(_network(), x, target, compiled=True, bf16=True)
    assert abs(compiled_losses[0] - losses[0]) < 0.01 * losses[0]
    assert _relative(compiled_grad, grad) < 3 * _relative(eager_bf16_grad, grad)
    assert losses[-1] < losses[0]
    for eager, compiled in zip(losses, compiled_losses):
        assert abs(compiled - eager) < 0.03 * eager, (losses, compiled_losses)


def test_compiled_default_keeps_less_than_plain_blocks_and_checkpointing_less_still():
    shape = (2, 1, 8, 32, 32)
    default = compiled_step_memory(_network, shape)
    plain = compiled_step_memory(lambda: _network(block_memory="plain"), shape)
    whole_blocks = compiled_step_memory(lambda: _network(block_memory="block"), shape)
    assert whole_blocks.saved < default.saved < plain.saved / 3
    # the blocks' regions keep x and z: 2 C fp16 values per voxel and block, at most what the rest keeps;
    # with the blocks' halves removed the network keeps default.saved - 2 * 2 * (blocks' C * voxels)
    block_values = sum(2 * c * v for c, v in zip([8, 16, 32], [8 * 32 * 32, 8 * 16 * 16, 4 * 8 * 8])) \
        + sum(2 * c * v for c, v in zip([8, 16], [8 * 32 * 32, 8 * 16 * 16]))
    assert default.saved >= 2 * 2 * block_values
    assert default.transient > 0 and plain.transient > 0
