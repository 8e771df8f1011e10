"""Training learns: a few dozen optimiser steps on one batch drive the loss down, through every NDC path and
with activation checkpointing, along the same trajectory as the naive (plain autograd) composition.

The end-to-end version, through ``nnUNetv2_train`` and ``nnUNetv2_predict``, is ``tests/e2e/test_learning.py``.
"""
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from nnunetv2_deconver import Deconver
from nnunetv2_deconver.ops.ndc_dispatch import force_implementation

from helpers.implementations import RUNNABLE

STEPS = 20
# Measured with the naive path (Adam, lr 1e-2, this batch and seed): the loss falls from 0.95 to 0.028 in
# 20 steps, a factor of 34; a third of that leaves room for other torch builds and CPUs.
MIN_FACTOR = 10
# The paths differ by float rounding only: measured 5e-6 relative after 30 steps; a backward with a wrong sign
# or a drifting recomputation departs from the naive trajectory at the first step.
TRAJECTORY_RTOL = 1e-3


def _batch():
    """Two 8^3 images, each a bright ball (the foreground class) in Gaussian noise."""
    generator = torch.Generator().manual_seed(0)
    grid = torch.stack(torch.meshgrid(*[torch.arange(8.0)] * 3, indexing="ij"))
    centres = 2.5 + 3 * torch.rand(2, 3, 1, 1, 1, generator=generator)
    target = ((grid[None] - centres).square().sum(1) < 5).long()
    image = target[:, None].float() + 0.3 * torch.randn(2, 1, 8, 8, 8, generator=generator)
    return image, target


def _losses(implementation: str, checkpoint_blocks: bool) -> list:
    image, target = _batch()
    torch.manual_seed(0)
    # 8^3 and 4^3 voxels: both stages at or above the 3D channels-last threshold, so every forced path runs
    network = Deconver(1, 2, [4, 8], nn.Conv3d, 3, [1, 2], 2, checkpoint_blocks=checkpoint_blocks)
    optimizer = torch.optim.Adam(network.parameters(), lr=1e-2)
    losses = []
    with force_implementation(implementation):
        for _ in range(STEPS):
            optimizer.zero_grad()
            loss = F.cross_entropy(network(image), target)
            loss.backward()
            optimizer.step()
            losses.append(loss.item())
    return losses


@pytest.fixture(scope="module")
def naive_losses():
    return _losses("naive", checkpoint_blocks=False)


def test_naive_composition_overfits_one_batch(naive_losses):
    assert naive_losses[0] / naive_losses[-1] >= MIN_FACTOR, naive_losses


# every (path, checkpointing) pair except the reference itself
VARIANTS = [(name, checkpoint) for checkpoint in (False, True) for name in RUNNABLE
            if (name, checkpoint) != ("naive", False)]


@pytest.mark.parametrize("implementation,checkpoint_blocks", VARIANTS,
                         ids=[f"{n}-{'checkpointed' if c else 'plain'}" for n, c in VARIANTS])
def test_every_path_learns_along_the_naive_trajectory(naive_losses, implementation, checkpoint_blocks):
    losses = _losses(implementation, checkpoint_blocks)
    assert losses[0] / losses[-1] >= MIN_FACTOR, losses
    torch.testing.assert_close(torch.tensor(losses), torch.tensor(naive_losses), rtol=TRAJECTORY_RTOL, atol=0)
