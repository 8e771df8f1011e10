"""Paper presets: parameters and FLOPs/voxel against analytic counts and the paper's Tables I-V."""
import subprocess
import sys

import pytest
import torch

from nnunetv2_deconver.network.presets import PAPER_FIGURES, PAPER_PRESETS, paper_network, paper_widths
from nnunetv2_deconver.network.costs import measure_cost


def _blocks(widths):
    """(width, stage) of every Deconver block: one per encoder stage, one per decoder stage."""
    return [(c, s) for s, c in enumerate(widths)] + [(c, s) for s, c in enumerate(widths[:-1])]


def analytic_parameters(name, kernel, ratio, groups):
    """Parameter count written from the architecture description (NOTES.md section 2), term by term."""
    p = PAPER_PRESETS[name]
    d, widths, n_cls = p.dim, paper_widths(p.base_channels, p.n_stages), p.num_classes
    total = p.input_channels * widths[0] * 3 ** d  # stem, no bias
    for c, _ in _blocks(widths):
        g = c if groups is None else groups
        e = ratio * c
        total += c * c  # mixer projection in, no bias
        total += c * e + e  # NDC initial-source projection, bias
        total += c * (e // g) * kernel ** d  # NDC filter
        total += e * c + c  # mixer projection out, bias
        total += c * 4 * c + 4 * c + 4 * c * c + c  # MLP
    for lo, hi in zip(widths, widths[1:]):
        total += 2 * (lo * hi * 2 ** d + hi) - hi + lo  # strided conv (bias hi) + transposed conv (bias lo)
        total += 2 * lo * lo  # 1x1 fusion, no bias
        total += lo * n_cls + n_cls  # a head per decoder stage
    return total


def analytic_flops_per_voxel(name, kernel, ratio, groups):
    """(every conv, without the NDC update's convs): 2 FLOPs per multiply-accumulate, per input voxel."""
    p = PAPER_PRESETS[name]
    d, widths = p.dim, paper_widths(p.base_channels, p.n_stages)
    frac = [2.0 ** (-d * s) for s in range(len(widths))]  # voxels at stage s per input voxel
    total = 2 * p.input_channels * widths[0] * 3 ** d + 2 * widths[0] * p.num_classes  # stem, final head
    update = 0.0
    for c, s in _blocks(widths):
        g = c if groups is None else groups
        e = ratio * c
        total += 2 * frac[s] * (c * c + c * e + e * c + 8 * c * c)
        update += 3 * 2 * frac[s] * c * (e // g) * kernel ** d  # A(X), K(S0), A(K(S0))
    for s, (lo, hi) in enumerate(zip(widths, widths[1:])):
        total += 2 * 2 * frac[s + 1] * lo * hi * 2 ** d  # strided conv and transposed conv
        total += 2 * frac[s] * 2 * lo * lo  # fusion
    return total + update, total


@pytest.mark.parametrize("key", list(PAPER_FIGURES))
def test_parameters_match_the_analytic_count(key):
    with torch.device("meta"):
        net = paper_network(*key)
    assert sum(p.numel() for p in net.parameters()) == analytic_parameters(*key)


# BraTS'23 with k = 5: the paper prints 11.0M, but k = 5 adds 4 * (5^3 - 3^3) * sum(block widths) = 577,024
# filter weights to the 10.55M of k = 3 (the same delta that takes ISLES'22 from 10.48M to the printed 11.0M),
# so the table's figure is off by that much; we hold it to the 1.5% it is off by.
TOLERANCE = {("brats23", 5, 4, None): 0.015}


@pytest.mark.parametrize("key", list(PAPER_FIGURES))
def test_parameters_reproduce_the_paper(key):
    with torch.device("meta"):
        net = paper_network(*key)
    millions = sum(p.numel() for p in net.parameters()) / 1e6
    assert millions == pytest.approx(PAPER_FIGURES[key][0], rel=TOLERANCE.get(key, 0.01))


def test_brats_kernel5_delta_is_the_filter_growth():
    widths = paper_widths(32, 5)
    growth = 4 * (5 ** 3 - 3 ** 3) * sum(c for c, _ in _blocks(widths))
    assert analytic_parameters("brats23", 5, 4, None) - analytic_parameters("brats23", 3, 4, None) == growth


@pytest.mark.parametrize("key", list(PAPER_FIGURES))
def test_flops_match_the_analytic_count_and_the_paper(key):
    preset = PAPER_PRESETS[key[0]]
    patch = (32, 32, 32) if preset.dim == 3 else (64, 64)
    with torch.device("meta"):
        net = paper_network(*key)
    cost = measure_cost(net, preset.input_channels, patch)
    full, paper_style = analytic_flops_per_voxel(*key)
    assert cost.flops_per_voxel == pytest.approx(full, rel=1e-9)
    assert cost.paper_style_flops_per_voxel == pytest.approx(paper_style, rel=1e-9)
    assert cost.paper_style_flops_per_voxel / 1e3 == pytest.approx(PAPER_FIGURES[key][1], rel=0.05)


def test_measure_cost_leaves_a_real_network_untouched():
    net = paper_network("isles22")
    before = net.encoder.stages[0][0].weight.clone()
    measure_cost(net, 2, (16, 16, 16))
    assert net.encoder.stages[0][0].weight.device.type == "cpu"
    assert torch.equal(net.encoder.stages[0][0].weight, before)


@pytest.mark.parametrize("name", sorted(PAPER_PRESETS))
def test_every_preset_trains_a_step_at_a_small_patch(name):
    preset = PAPER_PRESETS[name]
    torch.manual_seed(0)
    net = paper_network(name, deep_supervision=True)
    patch = (2 * 2 ** (preset.n_stages - 1),) * preset.dim  # 2 voxels per axis at the bottleneck (instance norm)
    outputs = net(torch.rand(1, preset.input_channels, *patch))
    assert outputs[0].shape == (1, preset.num_classes, *patch)
    sum(o.float().mean() for o in outputs).backward()
    assert all(torch.isfinite(p.grad).all() for p in net.parameters())


def test_unknown_preset_is_refused():
    with pytest.raises(ValueError, match="unknown preset 'acdc'"):
        paper_network("acdc")


def test_profile_command_prints_the_table():
    result = subprocess.run([sys.executable, "-m", "nnunetv2_deconver.tools.cli", "profile", "--preset", "isles22"],
                            capture_output=True, text=True, check=True)
    rows = [line for line in result.stdout.splitlines() if line.startswith("isles22")]
    assert len(rows) == sum(key[0] == "isles22" for key in PAPER_FIGURES)
    assert "[6/6]" in result.stderr  # progress
    full, paper_style = analytic_flops_per_voxel("isles22", 3, 4, None)
    assert f"{analytic_parameters('isles22', 3, 4, None) / 1e6:.3f}M" in rows[0]
    assert f"{full / 1e3:.1f}K" in rows[0] and f"{paper_style / 1e3:.1f}K" in rows[0]
