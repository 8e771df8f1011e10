"""The Deconver block's recomputation regions against the naive composition: values, gradients, saved bytes."""
import math

import pytest
import torch

from nnunetv2_deconver.network import Deconver
from nnunetv2_deconver.network import block_recompute
from nnunetv2_deconver.network.blocks import DeconverBlock
from nnunetv2_deconver.network.costs import saved_tensor_bytes
from nnunetv2_deconver.ops.ndc_dispatch import force_implementation, select_implementation

CASES = [  # (shape, kernel, groups, iterations): channels-last and default-layout dispatch, 2D and 3D
    ((2, 8, 12, 10), (3, 3), None, 1),
    ((2, 8, 6, 5, 4), (3, 3, 3), None, 1),
    ((1, 4, 3, 6, 6), (1, 3, 3), 2, 2),
    ((2, 4, 3, 4), (3, 3), None, 3),  # 12 voxels: the naive dispatch
    ((1, 6, 3, 3, 3), (3, 1, 3), 3, 1),  # 27 voxels: the naive dispatch
]


def _block_and_input(shape, kernel, groups, iterations, seed=0):
    torch.manual_seed(seed)
    block = DeconverBlock(shape[1], kernel, groups=groups, iterations=iterations).double()
    with torch.no_grad():
        block.mixer.ndc.project.bias.add_(0.1)  # a source that is positive somewhere in every channel
    return block, torch.rand(*shape, dtype=torch.float64, requires_grad=True)


def _run(block, x, grad, memory):
    block.memory = memory
    x.grad = None
    for p in block.parameters():
        p.grad = None
    if memory != "plain":
        out = block(x)
    else:
        with force_implementation("naive"):
            out = block(x)
    out.backward(grad)
    return [out.detach(), x.grad.clone()] + [p.grad.clone() for p in block.parameters()]


# the whole batch a region; one sample and one NDC group (MLP hidden channel) a region; one sample and several
@pytest.mark.parametrize("region_bytes", [None, 1, 2000])
@pytest.mark.parametrize("memory", ["regions", "block"])
@pytest.mark.parametrize("shape,kernel,groups,iterations", CASES)
def test_recomputing_block_gives_the_naive_values_and_gradients(shape, kernel, groups, iterations, memory,
                                                                region_bytes, monkeypatch):
    if region_bytes is not None:
        monkeypatch.setitem(block_recompute.REGION_BYTES, "cpu", region_bytes)
    block, x = _block_and_input(shape, kernel, groups, iterations)
    grad = torch.randn(shape, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    expected = _run(block, x, grad, memory="plain")
    got = _run(block, x, grad, memory=memory)
    names = ["output", "x"] + [name for name, _ in block.named_parameters()]
    for name, g, e in zip(names, got, expected):
        assert g.abs().max() > 0 or e.abs().max() == 0, name
        torch.testing.assert_close(g, e, rtol=1e-10, atol=1e-12, msg=name)


@pytest.mark.parametrize("region_bytes", [None, 1])
@pytest.mark.parametrize("shape,kernel", [((2, 4, 5, 4), (3, 3)), ((1, 2, 3, 4, 3), (3, 3, 3))])
def test_recomputing_block_passes_gradcheck(shape, kernel, region_bytes, monkeypatch):
    if region_bytes is not None:
        monkeypatch.setitem(block_recompute.REGION_BYTES, "cpu", region_bytes)
    block, x = _block_and_input(shape, kernel, None, 1)
    assert torch.autograd.gradcheck(lambda x, *parameters: block(x), (x, *block.parameters()))


@pytest.mark.parametrize("budget,expected", [(1, 16), (4 * 30 * 4 * 2, 8), (4 * 30 * 4 * 4, 4),
                                             (8 * 4 * 30 * 4, 2), (2 * 8 * 4 * 30 * 4, 1)])
def test_regions_hold_whole_samples_or_whole_ndc_groups_within_the_budget(budget, expected):
    """C = 8, G = 8 (R = 4), 2 samples of 30 voxels: a group's source map of one sample is 4 * 30 fp32 values,
    a sample's 8 groups 8 times that; chunks round down to multiples of 16 sources where they hold 16."""
    block = DeconverBlock(8, (3, 3))
    x = torch.zeros(2, 8, 5, 6)
    found = block_recompute.regions(x, 8, 4, block.mixer.chunk_of, budget)
    assert len(found) == expected
    for s0, s1, chunk in found:
        if chunk is not None:
            c0, c1, e0, e1 = chunk
            assert s1 - s0 == 1 and e1 - e0 == 4 * (c1 - c0) and 4 * 30 * 4 * (c1 - c0) <= max(budget, 4 * 30 * 4)
    covered = {(s, c) for s0, s1, chunk in found for s in range(s0, s1)
               for c in (range(chunk[0], chunk[1]) if chunk else range(8))}
    assert covered == {(s, c) for s in range(2) for c in range(8)}  # every sample and channel exactly once
    assert sum((s1 - s0) * ((chunk[1] - chunk[0]) if chunk else 8) for s0, s1, chunk in found) == 16


@pytest.mark.parametrize("shape,kernel", [((2, 8, 12, 10), (3, 3)), ((2, 8, 6, 5, 4), (3, 3, 3)),
                                          ((2, 4, 3, 4), (3, 3))])
def test_block_saves_its_input_and_its_midpoint_only(shape, kernel):
    block = DeconverBlock(shape[1], kernel)
    x = torch.rand(shape, requires_grad=True)
    # x and z = x + mixer(norm1(x)), each (B, C, *spatial) in float32
    assert saved_tensor_bytes(lambda: block(x), exclude=block.parameters()) == 2 * 4 * math.prod(shape)


@pytest.mark.parametrize("implementation", ["recompute", "channels_last"])
@pytest.mark.parametrize("ratio,mlp_ratio", [(4, 4), (2, 3)])
def test_plain_block_keeps_6_plus_2r_plus_2alpha_channels_per_voxel(implementation, ratio, mlp_ratio):
    """What the module docstrings count: x, norm1(x), h, S0 (R C), K(S0), the update (R C), z, norm2(z) and
    the MLP's hidden layer before and after GELU (alpha C each), plus the rectified filter and the norms'
    mean and inverse deviation per sample and channel: 22 C per voxel at the paper's R = alpha = 4."""
    b, c, spatial, kernel = 2, 8, (6, 5, 4), (3, 3, 3)
    block = DeconverBlock(c, kernel, ratio=ratio, mlp_ratio=mlp_ratio, memory="plain")
    x = torch.rand(b, c, *spatial, requires_grad=True)
    activations = (6 + 2 * ratio + 2 * mlp_ratio) * c * b * math.prod(spatial)
    values = activations + c * ratio * math.prod(kernel) + 2 * 2 * b * c  # + rectified filter, norm statistics
    with force_implementation(implementation):
        assert saved_tensor_bytes(lambda: block(x), exclude=block.parameters()) == 4 * values


def _expected_network_saved_bytes(batch, input_channels, patch, widths, strides):
    """Per sample, in floats: the input image (stem); per encoder stage x, z and the output y (kept by the
    next strided convolution or the first transposed one); per decoder stage the concatenation [skip, up]
    (2 C, kept by the fusing 1x1 convolution), x, z and y (kept by the head and the next transposed conv)."""
    voxels, size = [], list(patch)
    for stride in strides:
        size = [s // k for s, k in zip(size, stride)]
        voxels.append(math.prod(size))
    encoder = sum(3 * c * v for c, v in zip(widths, voxels))
    decoder = sum(5 * c * v for c, v in zip(widths[:-1], voxels[:-1]))
    return 4 * batch * (input_channels * math.prod(patch) + encoder + decoder)


@pytest.mark.parametrize("plan,patch", [
    (dict(n_stages=4, features_per_stage=[8, 16, 32, 64], conv_op=torch.nn.Conv3d, kernel_sizes=[[3, 3, 3]] * 4,
          strides=[[1, 1, 1], [2, 2, 2], [2, 2, 2], [2, 2, 2]]), (16, 16, 16)),
    (dict(n_stages=4, features_per_stage=[8, 16, 32, 32], conv_op=torch.nn.Conv2d, kernel_sizes=[[3, 3]] * 4,
          strides=[[1, 1], [2, 2], [2, 1], [2, 2]]), (32, 16)),
])
def test_network_saved_bytes_follow_the_widths(plan, patch):
    net = Deconver(input_channels=2, num_classes=3, deep_supervision=True, **plan)
    x = torch.rand(2, 2, *patch)
    expected = _expected_network_saved_bytes(2, 2, patch, plan["features_per_stage"], plan["strides"])
    assert saved_tensor_bytes(lambda: net(x), exclude=net.parameters()) == expected


def test_plain_path_is_kept_for_inference_and_the_forced_naive_update():
    block, x = _block_and_input((1, 4, 5, 4), (3, 3), None, 1)
    with torch.no_grad():
        assert saved_tensor_bytes(lambda: block(x)) == 0
    with force_implementation("naive"):
        assert select_implementation(x) == "naive"
        out = block(x)
    torch.autograd.grad(out.sum(), x, create_graph=True)  # the regions too are twice differentiable there


@pytest.mark.parametrize("memory", ["plain", "regions", "block"])
def test_single_sample_channels_last_block_gets_the_naive_input_gradient(memory):
    # InstanceNorm's CPU backward is wrong for one sample given a channels-last gradient; the block must
    # hand it the gradient in the norm output's own layout
    block, x = _block_and_input((1, 8, 12, 10), (3, 3), None, 1)
    assert select_implementation(x) == "channels_last"
    grad = torch.randn(x.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    expected = _run(block, x, grad, memory="plain")[1]
    block.memory = memory
    x.grad = None
    block(x).backward(grad)
    torch.testing.assert_close(x.grad, expected, rtol=1e-10, atol=1e-12)


def test_unknown_memory_mode_is_refused():
    with pytest.raises(ValueError, match="memory must be one of"):
        DeconverBlock(8, (3, 3), memory="recompute")
