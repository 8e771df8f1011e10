"""The CPU inference forward of a Deconver block and network against the naive composition (values)."""
import pytest
import torch

from nnunetv2_deconver.network import Deconver, block_inference
from nnunetv2_deconver.network.blocks import DeconverBlock
from nnunetv2_deconver.ops import CHANNELS_LAST
from nnunetv2_deconver.ops.ndc_dispatch import compute_layout, force_implementation

# every geometry class the presets and planner-made plans use: 2D 3x3, 3D 3^3, anisotropic 1x3x3, the k5
# preset, grouped NDC (G < C), two updates, a batch of two (per-sample norm), a non-default ratio
CASES = [  # (shape, kernel, groups, iterations, ratio)
    ((1, 8, 24, 20), (3, 3), None, 1, 4),
    ((1, 8, 6, 8, 8), (3, 3, 3), None, 1, 4),
    ((1, 16, 3, 12, 12), (1, 3, 3), None, 1, 4),
    ((1, 8, 10, 10), (5, 5), None, 1, 4),
    ((1, 8, 6, 6, 6), (3, 3, 3), 2, 2, 2),
    ((2, 8, 12, 10), (3, 3), None, 1, 4),
]


def _block_and_input(shape, kernel, groups, iterations, ratio):
    torch.manual_seed(0)
    block = DeconverBlock(shape[1], kernel, ratio=ratio, groups=groups, iterations=iterations).eval()
    with torch.no_grad():
        block.mixer.ndc.project.bias.add_(0.1)  # a source that is positive somewhere in every channel
    return block, torch.randn(*shape)


def _naive(module, x):
    with torch.no_grad(), force_implementation("naive"):  # plain conv/conv_transpose, default layout
        return module(x)


@pytest.mark.parametrize("fused", [True, False])
@pytest.mark.parametrize("shape,kernel,groups,iterations,ratio", CASES)
def test_block_inference_gives_the_naive_values(shape, kernel, groups, iterations, ratio, fused, monkeypatch):
    if not fused:  # torch without oneDNN's fused convolutions: the plain convolution and activation
        monkeypatch.setattr(block_inference, "_FUSED", None)
    block, x = _block_and_input(shape, kernel, groups, iterations, ratio)
    assert compute_layout(x) is not None  # the fast path is the one under test
    expected = _naive(block, x)
    with torch.no_grad():
        got = block(x)
    assert got.is_contiguous(memory_format=CHANNELS_LAST[x.dim() - 2]) and got.shape == x.shape  # stays there
    assert (got - x).abs().max() > 0.01  # the block did something
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


def test_inference_keeps_nothing_and_leaves_its_input_alone():
    block, x = _block_and_input(*CASES[1])
    before = x.clone()
    with torch.inference_mode():
        out = block(x)
    assert torch.equal(x, before) and not out.requires_grad


def test_network_inference_matches_the_naive_network_and_its_training_forward():
    torch.manual_seed(0)
    net = Deconver(1, 3, [8, 16, 16], torch.nn.Conv3d, [[1, 3, 3], [3, 3, 3], [3, 3, 3]],
                   [[1, 1, 1], [1, 2, 2], [2, 2, 2]], num_classes=3).eval()
    x = torch.randn(1, 1, 8, 16, 16)
    with torch.inference_mode():
        fast = net(x)
    torch.testing.assert_close(fast, _naive(net, x), rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(fast, net(x).detach(), rtol=1e-4, atol=1e-5)  # grad enabled: training path
    assert fast.is_contiguous()  # the logits in the default layout, as nnU-Net's predictor expects

