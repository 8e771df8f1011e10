"""The Deconver block's recomputing functions against the naive composition: values, gradients, saved bytes."""
import math

import pytest
import torch

from nnunetv2_deconver.network import Deconver
from nnunetv2_deconver.network import block_recompute
from nnunetv2_deconver.network.block_recompute import PreNormMixer, PreNormMlp
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


def _run(block, x, grad, recompute):
    block.recompute = recompute
    x.grad = None
    for p in block.parameters():
        p.grad = None
    if recompute:
        out = block(x)
    else:
        with force_implementation("naive"):
            out = block(x)
    out.backward(grad)
    return [out.detach(), x.grad.clone()] + [p.grad.clone() for p in block.parameters()]


# one chunk; one NDC group (MLP hidden channel) a chunk; several
@pytest.mark.parametrize("channel_chunk_bytes", [None, 1, 2000])
@pytest.mark.parametrize("chunk_bytes", [None, 1])  # default, and one sample at a time
@pytest.mark.parametrize("shape,kernel,groups,iterations", CASES)
def test_recomputing_block_gives_the_naive_values_and_gradients(shape, kernel, groups, iterations, chunk_bytes,
                                                                channel_chunk_bytes, monkeypatch):
    if chunk_bytes is not None:
        monkeypatch.setattr(block_recompute, "CHUNK_BYTES", chunk_bytes)
    if channel_chunk_bytes is not None:
        monkeypatch.setattr(block_recompute, "CHANNEL_CHUNK_BYTES", channel_chunk_bytes)
    block, x = _block_and_input(shape, kernel, groups, iterations)
    grad = torch.randn(shape, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    expected = _run(block, x, grad, recompute=False)
    got = _run(block, x, grad, recompute=True)
    names = ["output", "x"] + [name for name, _ in block.named_parameters()]
    for name, g, e in zip(names, got, expected):
        assert g.abs().max() > 0 or e.abs().max() == 0, name
        torch.testing.assert_close(g, e, rtol=1e-10, atol=1e-12, msg=name)


@pytest.mark.parametrize("shape,kernel", [((1, 4, 5, 4), (3, 3)), ((1, 2, 3, 4, 3), (3, 3, 3))])
def test_recomputing_functions_pass_gradcheck(shape, kernel):
    block, x = _block_and_input(shape, kernel, None, 1)

    def mixer(x, *parameters):
        return PreNormMixer.apply(x, block.norm1, block.mixer, *parameters)

    def mlp(x, *parameters):
        return PreNormMlp.apply(x, block.norm2, block.mlp, *parameters)

    # the functions read the modules' parameters in backward: gradcheck's perturbations go to the same tensors
    assert torch.autograd.gradcheck(mixer, (x, *PreNormMixer.inputs_of(block.mixer)))
    assert torch.autograd.gradcheck(mlp, (x, *PreNormMlp.inputs_of(block.mlp)))


def test_recomputing_block_refuses_double_backward():
    block, x = _block_and_input((1, 4, 5, 4), (3, 3), None, 1)
    out = block(x).sum()
    with pytest.raises(RuntimeError, match="double backward"):
        torch.autograd.grad(out, x, create_graph=True)


@pytest.mark.parametrize("shape,kernel", [((2, 8, 12, 10), (3, 3)), ((2, 8, 6, 5, 4), (3, 3, 3)),
                                          ((2, 4, 3, 4), (3, 3))])
def test_block_saves_its_input_and_its_midpoint_only(shape, kernel):
    block = DeconverBlock(shape[1], kernel)
    x = torch.rand(shape, requires_grad=True)
    # x and z = x + mixer(norm1(x)), each (B, C, *spatial) in float32
    assert saved_tensor_bytes(lambda: block(x), exclude=block.parameters()) == 2 * 4 * math.prod(shape)
    block.recompute = False  # plain autograd keeps the block's intermediates: many times more
    assert saved_tensor_bytes(lambda: block(x), exclude=block.parameters()) > 8 * 2 * 4 * math.prod(shape)


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
    assert "PreNorm" not in type(out.grad_fn).__name__  # the naive composition, twice differentiable
    torch.autograd.grad(out.sum(), x, create_graph=True)


@pytest.mark.parametrize("recompute", [False, True])
def test_single_sample_channels_last_block_gets_the_naive_input_gradient(recompute):
    # InstanceNorm's CPU backward is wrong for one sample given a channels-last gradient; the block must
    # hand it the gradient in the norm output's own layout
    block, x = _block_and_input((1, 8, 12, 10), (3, 3), None, 1)
    assert select_implementation(x) == "channels_last"
    grad = torch.randn(x.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    expected = _run(block, x, grad, recompute=False)[1]
    block.recompute = recompute
    x.grad = None
    block(x).backward(grad)
    torch.testing.assert_close(x.grad, expected, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("channel_chunk_bytes,expected", [(1, 8), (2 * 4 * 60 * 4, 4), (10 ** 9, 1)])
def test_channel_chunks_hold_whole_ndc_groups_within_the_budget(channel_chunk_bytes, expected, monkeypatch):
    """C = 8, G = 8 (R = 4): a group's source map of 2 samples x 30 voxels is 4 * 60 fp32 values."""
    monkeypatch.setattr(block_recompute, "CHANNEL_CHUNK_BYTES", channel_chunk_bytes)
    block = DeconverBlock(8, (3, 3))
    chunks = block_recompute._channel_chunks(block.mixer.ndc, torch.zeros(2, 8, 5, 6))
    assert len(chunks) == expected
    assert chunks[0][:1] == (0,) and chunks[-1][1::2] == (8, 32)
    assert all(c1 - c0 == (c1 - c0) // 1 and e1 - e0 == 4 * (c1 - c0) for c0, c1, e0, e1 in chunks)
    assert all(a[1] == b[0] and a[3] == b[2] for a, b in zip(chunks, chunks[1:]))
