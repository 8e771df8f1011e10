"""The fused CPU NDC kernel (ops/ndc_cpu_fused.py) against the naive composition of library convolutions."""
import warnings

import pytest
import torch

from nnunetv2_deconver.network import block_inference
from nnunetv2_deconver.network.blocks import DeconverBlock
from nnunetv2_deconver.ops import CHANNELS_LAST, force_implementation, nonnegative_deconvolution
from nnunetv2_deconver.ops import ndc_cpu_fused
from nnunetv2_deconver.ops.ndc_cpu_fused import fused_kernel, fused_update, fused_update_applies, ratio_major

# every geometry class the presets and plans use, channel counts with and without a tail of the kernel's
# 32-channel blocks (5: tail only; 40: a block and a tail), ratios 2 to 4, two updates, a batch of two
CASES = [  # (batch, channels, spatial, kernel, ratio, iterations)
    (1, 32, (12, 11), (3, 3), 4, 1),
    (2, 5, (9, 10), (5, 5), 3, 2),
    (1, 40, (5, 6, 7), (3, 3, 3), 2, 1),
    (1, 64, (3, 8, 9), (1, 3, 3), 4, 2),
    (2, 8, (4, 5, 6), (3, 5, 5), 4, 1),
    (1, 6, (3, 2, 4), (5, 5, 5), 2, 1),  # a kernel larger than the map: most taps fall outside
]


def _operands(batch, channels, spatial, kernel, ratio, seed=0):
    generator = torch.Generator().manual_seed(seed)
    observed = torch.rand(batch, channels, *spatial, generator=generator)
    source = torch.rand(batch, channels * ratio, *spatial, generator=generator)
    filters = torch.rand(channels, ratio, *kernel, generator=generator)
    return observed, source, filters


@pytest.fixture(autouse=True)
def _kernel_on(monkeypatch):
    monkeypatch.delenv("NNUNET_DECONVER_FUSED_CPU", raising=False)


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("batch,channels,spatial,kernel,ratio,iterations", CASES)
def test_fused_update_gives_the_naive_update(batch, channels, spatial, kernel, ratio, iterations, threads):
    observed, source, filters = _operands(batch, channels, spatial, kernel, ratio)
    if fused_kernel() is None:
        pytest.fail("the fused kernel did not build on this machine (a C compiler is a test requirement)")
    with torch.no_grad():
        assert fused_update_applies(observed, filters, channels)
        # reference in float64 through plain convolutions, in the layer's source order
        expected = nonnegative_deconvolution(observed.double(), source.double(), filters.double(), channels, 1e-6,
                                             iterations, implementation="naive")
        previous = torch.get_num_threads()
        torch.set_num_threads(threads)  # one range of rows, or one per thread
        try:
            got = fused_update(observed, ratio_major(source, channels, dim=1), filters, 1e-6, iterations)
        finally:
            torch.set_num_threads(previous)
    assert got.dtype == torch.float32 and got.is_contiguous(memory_format=CHANNELS_LAST[len(spatial)])
    assert (got - ratio_major(source, channels, dim=1)).abs().max() > 0.01  # the update changed the source
    torch.testing.assert_close(got.double(), ratio_major(expected, channels, dim=1), rtol=2e-5, atol=1e-6)


def test_ratio_major_is_the_permutation_from_source_c_r_to_r_c():
    channels, ratio = 3, 4
    order = ratio_major(torch.arange(channels * ratio), channels)
    # entry r * C + c holds the layer's source c * R + r
    assert order.tolist() == [c * ratio + r for r in range(ratio) for c in range(channels)]
    weight = torch.randn(2, channels * ratio, 5)
    assert torch.equal(ratio_major(weight, channels, dim=1), weight[:, order])


def test_applies_only_where_the_kernel_computes_the_update():
    observed, _, filters = _operands(1, 4, (3, 4, 5), (3, 3, 3), 2)
    with torch.no_grad():
        assert fused_update_applies(observed, filters, 4)
        assert not fused_update_applies(observed, filters, 2)  # grouped NDC (G < C)
        assert not fused_update_applies(observed.double(), filters.double(), 4)
        assert not fused_update_applies(observed[:, :, 0, 0], filters[:, :, 0, 0], 4)  # 1D
        big = torch.rand(4, 2, 9, 9, 3)  # 81 kernel rows
        assert not fused_update_applies(observed, big, 4)
    assert not fused_update_applies(observed, filters, 4)  # gradients recorded: the autograd paths


def test_without_a_compiler_it_warns_once_and_the_block_gives_the_same_values(monkeypatch, tmp_path):
    torch.manual_seed(0)
    block = DeconverBlock(8, (3, 3, 3)).eval()
    x = torch.randn(1, 8, 4, 6, 6)
    with torch.no_grad():
        fused = block(x)
        with force_implementation("naive"):
            naive = block(x)
    monkeypatch.setattr(ndc_cpu_fused, "_state", {})
    monkeypatch.setenv("CC", str(tmp_path / "no-such-compiler"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))  # nothing built before
    with pytest.warns(UserWarning, match="fused CPU NDC kernel is unavailable"):
        assert fused_kernel() is None
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # once
        assert fused_kernel() is None
        with torch.no_grad():
            fallback = block(x)
    torch.testing.assert_close(fused, naive, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(fallback, naive, rtol=1e-5, atol=1e-5)


def test_the_kernel_is_built_once_into_the_cache_and_can_be_turned_off(monkeypatch, tmp_path):
    monkeypatch.setattr(ndc_cpu_fused, "_state", {})
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert fused_kernel() is not None
    cache = tmp_path / "nnunetv2_deconver"
    assert [p.suffix for p in cache.iterdir()] == [".so"]  # no scratch left behind
    built = next(cache.iterdir()).stat().st_mtime_ns
    monkeypatch.setattr(ndc_cpu_fused, "_state", {})
    assert fused_kernel() is not None and next(cache.iterdir()).stat().st_mtime_ns == built  # loaded, not rebuilt
    monkeypatch.setenv("NNUNET_DECONVER_FUSED_CPU", "0")
    observed, _, filters = _operands(1, 4, (3, 4, 5), (3, 3, 3), 2)
    with torch.no_grad():
        assert fused_kernel() is None and not fused_update_applies(observed, filters, 4)


def test_the_block_runs_the_fused_kernel_at_cpu_inference(monkeypatch):
    calls = []

    def counted(*args, **kwargs):
        calls.append(args[1].shape)
        return fused_update(*args, **kwargs)

    monkeypatch.setattr(block_inference, "fused_update", counted)
    block = DeconverBlock(8, (1, 3, 3), ratio=4).eval()
    with torch.no_grad():
        block(torch.randn(1, 8, 3, 6, 6))
    assert calls == [torch.Size([1, 32, 3, 6, 6])]
