"""On a CUDA GPU: the fast NDC paths against naive, one training step under fp16 autocast with a GradScaler
against fp32 gradients, and DTC's sub-pixel sampling under autocast. Skipped where CUDA is absent."""
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from nnunetv2_deconver import Deconver
from nnunetv2_deconver.ops.ndc import nonnegative_deconvolution
from nnunetv2_deconver.ops.ndc_dispatch import select_implementation

from helpers.dtc_geometry import expected_ramp, pure_sampler, ramp
from helpers.implementations import RUNNABLE

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU; none is visible")
CUDA = "cuda"


def _relative(got, expected):
    return ((got.double() - expected.double()).norm() / expected.double().norm().clamp_min(1e-30)).item()


def test_default_dispatch_on_the_gpu_is_recompute():
    assert select_implementation(torch.empty(2, 8, 16, 16, 16, device=CUDA)) == "recompute"


@pytest.mark.parametrize("implementation", [i for i in RUNNABLE if i != "naive"])
@pytest.mark.parametrize("spatial,kernel,groups", [((12, 10, 8), (3, 3, 3), 8), ((24, 20), (5, 5), 2),
                                                   ((6, 16, 16), (1, 3, 3), 1)])
def test_fast_paths_match_naive_on_the_gpu(implementation, spatial, kernel, groups):
    generator = torch.Generator(device=CUDA).manual_seed(0)
    c, e = 8, 32
    x = torch.rand(2, c, *spatial, device=CUDA, generator=generator)
    source = torch.rand(2, e, *spatial, device=CUDA, generator=generator) + 0.1
    filters = torch.rand(c, e // groups, *kernel, device=CUDA, generator=generator)
    grad = torch.randn(2, e, *spatial, device=CUDA, generator=generator)
    results = {}
    for name in ("naive", implementation):
        operands = [t.clone().requires_grad_() for t in (x, source, filters)]
        out = nonnegative_deconvolution(*operands, groups, iterations=2, implementation=name)
        out.backward(grad)
        results[name] = [out.detach()] + [t.grad for t in operands]
    for got, expected in zip(results[implementation], results["naive"]):
        assert _relative(got, expected) <= 1e-4


def _step_gradients(network, x, target, autocast):
    network.zero_grad()
    optimizer = torch.optim.SGD(network.parameters(), lr=0.0)
    scaler = torch.amp.GradScaler(CUDA, enabled=autocast)
    with torch.autocast(CUDA, dtype=torch.float16, enabled=autocast):
        outputs = network(x)
        loss = sum(F.cross_entropy(o.float(), F.interpolate(target[:, None].float(), size=o.shape[2:])[:, 0].long())
                   for o in outputs)
    scaler.scale(loss).backward()
    scaler.unscale_(optimizer)
    grads = {n: p.grad.detach().clone() for n, p in network.named_parameters()}
    scale_before = scaler.get_scale()
    scaler.step(optimizer)
    scaler.update()
    return grads, scale_before, scaler.get_scale()


def test_fp16_autocast_step_with_grad_scaler_matches_fp32():
    torch.manual_seed(0)
    network = Deconver(1, 3, [8, 16, 32], nn.Conv3d, 3, [1, 2, 2], 2, deep_supervision=True).to(CUDA)
    x = torch.rand(2, 1, 32, 32, 32, device=CUDA)
    target = (x[:, 0] > 0.5).long()
    reference, _, _ = _step_gradients(network, x, target, autocast=False)
    grads, before, after = _step_gradients(network, x, target, autocast=True)
    assert after == before, "the scaler found inf/NaN gradients and skipped the step"
    for name, expected in reference.items():
        assert torch.isfinite(grads[name]).all(), name
        # fp16 keeps ~3 decimal digits per operation; a few percent over a whole network's backward
        assert _relative(grads[name], expected) <= 5e-2, name


@pytest.mark.parametrize("size, stride", [((9, 11), (2, 2)), ((6, 9, 11), (1, 2, 2))])
def test_dtc_subpixel_shift_under_autocast(size, stride):
    d = len(size)
    coefficients = (3.0, 5.0, 7.0)[:d]
    receptive_field, offset = 2.0, 0.5
    shift = receptive_field / 2 * offset  # input pixels: a quarter of the window either way
    x = ramp(size, coefficients).to(CUDA)
    for axis in range(d):
        offsets = [0.0] * d
        offsets[axis] = math.atanh(offset)
        dtc = pure_sampler(d, stride, receptive_field, offsets, [30.0] * d).to(CUDA)
        shifts = [0.0] * d
        shifts[axis] = shift
        expected, inside = expected_ramp(size, stride, coefficients, shifts)
        with torch.autocast(CUDA, dtype=torch.float16):
            out = dtc(x)[0, 0].float().cpu()
        # the ramp stays below 128, where fp16's spacing is 1/16: a few roundings of the values (input, 1x1
        # conv, output) stay under 0.25, while the 0.5-pixel shift moves the ramp by 1.5 to 3.5 units; a
        # position rounded to whole pixels, or a shift along the wrong axis, is off by at least 1.5
        torch.testing.assert_close(out[inside], expected[inside], rtol=0, atol=0.25)
