"""Every NDC implementation against the naive composition: values, gradients, precision, memory, dispatch."""

import pytest
import torch
from torch import nn

from nnunetv2_deconver.ops.ndc import NDC, nonnegative_deconvolution
from nnunetv2_deconver.ops.ndc_dispatch import force_implementation, select_implementation
from nnunetv2_deconver.ops.ndc_paths import PATHS, NdcPath
from nnunetv2_deconver.ops.ndc_update import plain_update
from nnunetv2_deconver.network import Deconver
from nnunetv2_deconver.network.costs import saved_tensor_bytes
from nnunetv2_deconver.network.presets import PAPER_PRESETS, paper_widths

from helpers.implementations import RUNNABLE, max_relative_error, run_under_bf16_autocast, run_with_gradients

FAST = [name for name in RUNNABLE if name != "naive"]
CASES = [  # (spatial, kernel, C, E, groups)
    ((9,), (3,), 4, 8, 4),
    ((7,), (5,), 2, 6, 1),
    ((6, 7), (3, 3), 4, 8, 2),
    ((6, 5), (1, 5), 3, 12, 3),
    ((5, 6, 4), (3, 3, 3), 4, 16, 4),
    ((4, 6, 5), (1, 3, 3), 4, 8, 1),
    ((5, 4, 6), (3, 1, 5), 2, 8, 2),
]


def _operands(spatial, kernel, c, e, groups, seed=0, batch=2, dtype=torch.float32):
    generator = torch.Generator().manual_seed(seed)
    x = torch.rand(batch, c, *spatial, generator=generator, dtype=dtype)
    source = 0.05 + torch.rand(batch, e, *spatial, generator=generator, dtype=dtype)
    filters = torch.rand(c, e // groups, *kernel, generator=generator, dtype=dtype)
    grad = torch.randn(batch, e, *spatial, generator=generator, dtype=dtype)
    return [t.requires_grad_() for t in (x, source, filters)], grad


@pytest.mark.parametrize("implementation", FAST)
@pytest.mark.parametrize("iterations", [1, 3])
@pytest.mark.parametrize("spatial,kernel,c,e,groups", CASES)
def test_fast_paths_match_naive_values_and_gradients(spatial, kernel, c, e, groups, iterations, implementation):
    operands, grad = _operands(spatial, kernel, c, e, groups)
    expected, expected_grads = run_with_gradients("naive", operands, grad, groups, iterations)
    got, got_grads = run_with_gradients(implementation, operands, grad, groups, iterations)
    assert got.dtype == torch.float32 and got.shape == expected.shape
    assert max_relative_error(got, expected) <= 1e-5
    for name, g, ref in zip(("x", "source", "filters"), got_grads, expected_grads):
        assert max_relative_error(g, ref) <= 1e-4, name


@pytest.mark.parametrize("implementation", FAST)
def test_fast_paths_in_float64_are_exact_to_rounding(implementation):
    operands, grad = _operands((5, 4, 6), (3, 3, 3), 4, 16, 4, dtype=torch.float64)
    expected, expected_grads = run_with_gradients("naive", operands, grad, 4, 2)
    got, got_grads = run_with_gradients(implementation, operands, grad, 4, 2)
    assert got.dtype == torch.float64
    assert max_relative_error(got, expected) <= 1e-12
    assert all(max_relative_error(g, ref) <= 1e-10 for g, ref in zip(got_grads, expected_grads))


@pytest.mark.parametrize("implementation", FAST)
def test_gradcheck(implementation):
    operands, _ = _operands((3, 4), (3, 3), 2, 4, 2, batch=1, dtype=torch.float64)
    assert torch.autograd.gradcheck(
        lambda x, s, v: nonnegative_deconvolution(x, s, v, 2, 1e-3, 2, implementation=implementation), operands)


@pytest.mark.parametrize("implementation", FAST)
def test_only_requested_gradients_are_computed(implementation):
    operands, grad = _operands((5, 6), (3, 3), 4, 8, 2)
    _, expected_grads = run_with_gradients("naive", operands, grad, 2, 1)
    x, source, filters = (t.detach() for t in operands)
    filters.requires_grad_()
    nonnegative_deconvolution(x, source, filters, 2, implementation=implementation).backward(grad)
    assert max_relative_error(filters.grad, expected_grads[2]) <= 1e-4


@pytest.mark.parametrize("implementation", FAST)
def test_autocast_bf16_computes_in_fp32_like_naive(implementation):
    operands, grad = _operands((6, 5, 4), (3, 3, 3), 4, 16, 4)
    results = {name: run_under_bf16_autocast(name, operands, grad, 4) for name in ("naive", implementation)}
    assert max_relative_error(results[implementation][0], results["naive"][0]) <= 1e-5
    for got, ref in zip(results[implementation][1], results["naive"][1]):
        assert got.dtype == torch.float32
        assert max_relative_error(got, ref) <= 1e-4


def _saved_activation_bytes(implementation, operands, iterations=1):
    """Distinct storages autograd keeps for backward, the filter (a parameter) left out."""
    out = []
    saved = saved_tensor_bytes(lambda: out.append(nonnegative_deconvolution(
        *operands, 8, iterations=iterations, implementation=implementation)), exclude=operands[2:3])
    return saved, out[0]


@pytest.mark.parametrize("implementation", FAST)
def test_fast_paths_save_at_most_a_third_of_the_naive_activations(implementation):
    operands, _ = _operands((8, 8, 8), (3, 3, 3), 8, 32, 8)
    naive, _ = _saved_activation_bytes("naive", operands)
    fast, _ = _saved_activation_bytes(implementation, operands)
    assert fast <= naive / 3
    # x (C), S0 (R*C) and K(S0) (C): nothing that grows with the number of updates
    assert _saved_activation_bytes(implementation, operands, iterations=3)[0] == fast
    x, source = operands[:2]
    assert fast == x.nbytes + source.nbytes + x.nbytes


@pytest.mark.parametrize("implementation", RUNNABLE)
def test_double_backward_where_the_table_says_so_and_a_clear_refusal_elsewhere(implementation):
    operands, _ = _operands((6,), (3,), 2, 4, 2, batch=1, dtype=torch.float64)

    def update(x, s, v):
        return nonnegative_deconvolution(x, s, v, 2, 1e-3, implementation=implementation)

    if PATHS[implementation].twice_differentiable:
        assert torch.autograd.gradgradcheck(update, operands)
    else:
        with pytest.raises(RuntimeError, match="double backward.*implementation='naive'"):
            torch.autograd.grad(update(*operands).sum(), operands[1], create_graph=True)


def test_a_new_path_is_one_table_entry(monkeypatch):
    """Registered in the table alone, a path is accepted by name, by the forcing context and by the layer."""
    calls = []

    def doubled_naive(x, source, filters, groups, eps, iterations, layout):
        calls.append(layout)
        return 2 * plain_update(x, source, filters, groups, eps, iterations, layout)

    monkeypatch.setitem(PATHS, "doubled", NdcPath("doubled", doubled_naive, doubled_naive, channels_last=True,
                                                  twice_differentiable=True, summary="a test's path"))
    operands, _ = _operands((5, 6), (3, 3), 4, 8, 4)
    expected = nonnegative_deconvolution(*operands, 4, implementation="naive")
    torch.testing.assert_close(nonnegative_deconvolution(*operands, 4, implementation="doubled"), 2 * expected)
    layer = NDC(4, (3, 3))
    x = torch.rand(1, 4, 6, 6)
    with force_implementation("naive"):
        reference = layer(x)
    with force_implementation("doubled"):
        torch.testing.assert_close(layer(x), 2 * reference)
        torch.testing.assert_close(layer(x, recomputed=True), 2 * reference)
    assert calls == [torch.channels_last] * 3


def test_unknown_implementation_is_a_value_error():
    operands, _ = _operands((6,), (3,), 2, 4, 2)
    with pytest.raises(ValueError, match="unknown NDC implementation 'fast'"):
        nonnegative_deconvolution(*operands, 2, implementation="fast")
    with pytest.raises(ValueError, match="unknown NDC implementation"):
        with force_implementation("fast"):
            pass


def test_output_and_gradients_keep_the_callers_layout():
    operands, grad = _operands((5, 6, 4), (3, 3, 3), 4, 16, 4)
    x, source, filters = (t.detach().contiguous(memory_format=torch.channels_last_3d).requires_grad_()
                          if t.dim() == 5 and i < 2 else t for i, t in enumerate(operands))
    out = nonnegative_deconvolution(x, source, filters, 4, implementation="channels_last")
    assert out.is_contiguous(memory_format=torch.channels_last_3d)
    out.backward(grad)
    assert source.grad.is_contiguous(memory_format=torch.channels_last_3d)
    plain = nonnegative_deconvolution(*operands, 4, implementation="channels_last")
    assert plain.is_contiguous()


def _stage_geometries():
    """(dim, channels, spatial) of every NDC in the paper presets at their training patch, and in a typical
    nnU-Net 3d_fullres plan (6 stages of 32..320 at a 128^3 patch)."""
    for preset in PAPER_PRESETS.values():
        for level, width in enumerate(paper_widths(preset.base_channels, preset.n_stages)):
            yield preset.dim, width, tuple(s // 2 ** level for s in preset.patch_size)
    for level, width in enumerate([32, 64, 128, 256, 320, 320]):
        yield 3, width, (128 // 2 ** level,) * 3


@pytest.mark.parametrize("dim,channels,spatial", sorted(set(_stage_geometries())))
def test_dispatch_rule_on_cpu_and_gpu(dim, channels, spatial):
    x = torch.empty(2, channels, *spatial, device="meta")
    voxels = torch.Size(spatial).numel()
    # the rule measured in docs/performance.md: from 4^3 (3D) / 8^2 (2D) voxels on, channels-last is
    # faster than naive on the CPU, except for 2D maps of >= 512 channels and >= 64^2 voxels (parity);
    # below, per-call costs dominate and naive is as fast
    threshold = 4 ** 3 if dim == 3 else 8 ** 2
    wide_2d = dim == 2 and channels >= 512 and voxels >= 64 ** 2
    expected = "channels_last" if voxels >= threshold and not wide_2d else "naive"
    assert select_implementation(x, device_type="cpu") == expected
    assert select_implementation(x, device_type="cuda") == "recompute"


def test_first_brats_stage_on_cpu_takes_the_channels_last_path():
    assert select_implementation(torch.empty(2, 32, 128, 128, 128, device="meta"), device_type="cpu") == \
        "channels_last"


def test_force_implementation_overrides_dispatch_and_restores_it():
    x = torch.empty(1, 4, 16, 16, 16)
    with force_implementation("recompute"):
        assert select_implementation(x) == "recompute"
        with force_implementation("naive"):
            assert select_implementation(x) == "naive"
        assert select_implementation(x) == "recompute"
    assert select_implementation(x) == "channels_last"


def _network_outputs(network, x, implementation):
    network.zero_grad()
    with force_implementation(implementation):
        out = network(x)
        out.square().mean().backward()
    return out.detach(), {name: p.grad.clone() for name, p in network.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("dim", [2, 3])
def test_network_through_every_path_matches_naive(dim):
    torch.manual_seed(0)
    conv = nn.Conv3d if dim == 3 else nn.Conv2d
    network = Deconver(2, 3, [8, 16, 32], conv, 3, [1, 2, 2], 2, deep_supervision=False)
    x = torch.rand(2, 2, *(16,) * dim)
    expected, expected_grads = _network_outputs(network, x, "naive")
    for implementation in FAST:
        got, grads = _network_outputs(network, x, implementation)
        assert got.is_contiguous()
        assert max_relative_error(got, expected) <= 1e-4, implementation
        for name, ref in expected_grads.items():
            assert max_relative_error(grads[name], ref) <= 1e-3, (implementation, name)


@pytest.mark.parametrize("implementation", FAST)
def test_ndc_layer_under_torch_compile(implementation):
    torch.manual_seed(0)
    layer = NDC(4, (3, 3, 3), ratio=2)
    x = torch.rand(1, 4, 6, 6, 6, requires_grad=True)
    with force_implementation("naive"):
        expected = layer(x)
        expected.sum().backward()
    expected_grad = layer.filters.grad.clone()
    layer.zero_grad()
    compiled = torch.compile(layer, backend="aot_eager", fullgraph=True)
    with force_implementation(implementation):
        got = compiled(x)
        got.sum().backward()
    assert max_relative_error(got.detach(), expected.detach()) <= 1e-5
    assert max_relative_error(layer.filters.grad, expected_grad) <= 1e-4
