"""The default NDC dispatch inside a whole network: stages on both sides of every threshold take different
paths (and layouts) in one forward and backward, and the result is the forced-naive one."""
import torch
from torch import nn

import nnunetv2_deconver.ops.ndc as ndc_module
from nnunetv2_deconver import Deconver
from nnunetv2_deconver.ops import ndc_dispatch
from nnunetv2_deconver.ops.ndc_dispatch import CHANNELS_LAST_MIN_VOXELS, force_implementation


def _relative(got, expected):
    return ((got - expected).norm() / expected.norm().clamp_min(1e-30)).item()


def _run(network, x, implementation=None):
    """Outputs and parameter gradients of one forward/backward; ``None``: the default dispatch."""
    network.zero_grad()
    with force_implementation(implementation):
        outputs = network(x)
        weights = [torch.linspace(0.5, 1.5, o.numel()).reshape(o.shape) for o in outputs]
        sum((o * w).sum() for o, w in zip(outputs, weights)).backward()
    return [o.detach() for o in outputs], {n: p.grad.clone() for n, p in network.named_parameters()}


def _chosen_paths(monkeypatch):
    """Record (channels, voxels, path) of every NDC layer call."""
    seen = []
    select = ndc_module.select_implementation

    def spy(x, device_type=None):
        name = select(x, device_type)
        seen.append((x.shape[1], x.shape[2:].numel(), name))
        return name

    monkeypatch.setattr(ndc_module, "select_implementation", spy)
    return seen


def _check_against_naive(network, x, monkeypatch):
    seen = _chosen_paths(monkeypatch)
    outputs, grads = _run(network, x)
    paths = list(seen)
    expected_outputs, expected_grads = _run(network, x, "naive")
    for got, expected in zip(outputs, expected_outputs):
        assert _relative(got, expected) <= 1e-5
    for name, expected in expected_grads.items():
        assert _relative(grads[name], expected) <= 1e-4, name
    return paths


def test_3d_stages_on_both_sides_of_the_channels_last_threshold(monkeypatch):
    torch.manual_seed(0)
    threshold = CHANNELS_LAST_MIN_VOXELS[3]  # 4^3
    # 8^3, 4^3 (exactly the threshold) and 2^3 voxels: channels-last, then naive at the bottom
    network = Deconver(1, 3, [4, 8, 8], nn.Conv3d, 3, [1, 2, 2], 2, deep_supervision=True)
    paths = _check_against_naive(network, torch.rand(2, 1, 8, 8, 8), monkeypatch)
    assert {(v, p) for _, v, p in paths} == {(8 ** 3, "channels_last"), (threshold, "channels_last"),
                                            (2 ** 3, "naive")}


def test_2d_stages_on_both_sides_of_both_thresholds(monkeypatch):
    torch.manual_seed(0)
    assert CHANNELS_LAST_MIN_VOXELS[2] == 8 ** 2
    # The wide-map rule (NAIVE_2D_FROM, 512 channels at 64^2) takes ~16 s a step at its real size on a CPU;
    # the rule is the same at a smaller size, so the wide-map threshold is lowered to 16 channels at 16^2
    # here (its real values are checked in test_ndc_paths.py::test_dispatch_rule_on_cpu_and_gpu).
    monkeypatch.setattr(ndc_dispatch, "NAIVE_2D_FROM", (16, 16 ** 2))
    # stage widths/voxels: 16 at 32^2 (wide: naive), 8 at 16^2 (channels-last), 16 at 8^2 (below the wide
    # size, at the channels-last threshold: channels-last), 16 at 4^2 (below it: naive)
    network = Deconver(1, 4, [16, 8, 16, 16], nn.Conv2d, 3, [1, 2, 2, 2], 2, deep_supervision=True)
    paths = _check_against_naive(network, torch.rand(2, 1, 32, 32), monkeypatch)
    assert set(paths) == {(16, 32 ** 2, "naive"), (8, 16 ** 2, "channels_last"), (16, 8 ** 2, "channels_last"),
                          (16, 4 ** 2, "naive")}
