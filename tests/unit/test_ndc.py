"""The NDC update against an independent float64 implementation, Theorem 1, gradients and precision."""
import numpy as np
import pytest
import torch
from hypothesis import given, settings, strategies as st

from nnunetv2_deconver.ops.ndc import NDC, nonnegative_deconvolution
from helpers.ndc_reference import adjoint, correlate, ndc_update

CASES = [  # (spatial, kernel, C, E, groups)
    ((9,), (3,), 4, 8, 4),
    ((7,), (5,), 2, 6, 1),
    ((6, 7), (3, 3), 4, 8, 2),
    ((6, 5), (1, 5), 3, 12, 3),
    ((5, 6, 4), (3, 3, 3), 2, 4, 2),
    ((4, 6, 5), (1, 3, 3), 4, 8, 1),
    ((5, 4, 6), (3, 1, 5), 2, 8, 2),
]


def _operands(spatial, kernel, c, e, groups, seed=0, batch=2):
    rng = np.random.default_rng(seed)
    x = rng.uniform(0, 1, (batch, c, *spatial))
    source = rng.uniform(0.05, 1, (batch, e, *spatial))
    filters = rng.uniform(0, 1, (c, e // groups, *kernel))
    return x, source, filters


def test_reference_adjoint_is_the_adjoint():
    x, source, filters = _operands((5, 6), (3, 5), 4, 8, 2)
    lhs = np.sum(correlate(source, filters, 2) * x)
    rhs = np.sum(source * adjoint(x, filters, 2))
    assert lhs == pytest.approx(rhs, rel=1e-12)


@pytest.mark.parametrize("iterations", [1, 3])
@pytest.mark.parametrize("spatial,kernel,c,e,groups", CASES)
def test_update_matches_independent_reference(spatial, kernel, c, e, groups, iterations):
    x, source, filters = _operands(spatial, kernel, c, e, groups)
    expected = ndc_update(x, source, filters, groups, 1e-8, iterations)
    got = nonnegative_deconvolution(*(torch.from_numpy(a) for a in (x, source, filters)), groups, 1e-8, iterations)
    assert got.dtype == torch.float64
    np.testing.assert_allclose(got.numpy(), expected, rtol=1e-10, atol=1e-12)


def test_eps_enters_numerator_and_denominator():
    # X = 0 and a source that reconstructs to 0 far from anything: the ratio is eps / eps = 1 there
    x = torch.zeros(1, 1, 5)
    source = torch.zeros(1, 2, 5)
    source[0, 0, 0] = 1.0
    filters = torch.ones(1, 2, 3)
    out = nonnegative_deconvolution(x, source, filters, groups=1, eps=1e-3)
    expected = ndc_update(x.double().numpy(), source.double().numpy(), filters.double().numpy(), 1, 1e-3)
    np.testing.assert_allclose(out.numpy(), expected, rtol=1e-6)


def _error(x, source, filters, groups):
    return float(np.sum((x - correlate(source, filters, groups)) ** 2))


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 2 ** 31 - 1), length=st.integers(3, 8), kernel=st.sampled_from([1, 3, 5]),
       groups=st.sampled_from([1, 2]), ratio=st.sampled_from([1, 2, 3]), two_d=st.booleans())
def test_theorem1_reconstruction_error_never_increases(seed, length, kernel, groups, ratio, two_d):
    spatial, kernels = ((length, length + 1), (kernel, kernel)) if two_d else ((length,), (kernel,))
    c = 2 * groups
    rng = np.random.default_rng(seed)
    x = rng.uniform(0, 1, (1, c, *spatial))
    source = rng.uniform(0.01, 1, (1, ratio * c, *spatial))
    filters = rng.uniform(0.01, 1, (c, ratio * c // groups, *kernels))
    errors = [_error(x, source, filters, groups)]
    s = torch.from_numpy(source)
    for _ in range(10):
        # eps = 0 is the setting of Theorem 1; strictly positive operands keep the denominator positive
        s = nonnegative_deconvolution(torch.from_numpy(x), s, torch.from_numpy(filters), groups, eps=0.0)
        errors.append(_error(x, s.numpy(), filters, groups))
    for before, after in zip(errors, errors[1:]):
        assert after <= before * (1 + 1e-10) + 1e-12


def test_gradcheck_all_three_arguments():
    torch.manual_seed(0)
    x = torch.rand(1, 2, 4, 5, dtype=torch.float64, requires_grad=True)
    source = (torch.rand(1, 4, 4, 5, dtype=torch.float64) + 0.1).requires_grad_()
    filters = (torch.rand(2, 2, 3, 1, dtype=torch.float64) + 0.1).requires_grad_()
    for iterations in (1, 2):
        assert torch.autograd.gradcheck(
            lambda a, b, c: nonnegative_deconvolution(a, b, c, groups=2, iterations=iterations),
            (x, source, filters))


def test_gradcheck_3d_grouped():
    torch.manual_seed(1)
    x = torch.rand(1, 2, 3, 3, 4, dtype=torch.float64, requires_grad=True)
    source = (torch.rand(1, 4, 3, 3, 4, dtype=torch.float64) + 0.1).requires_grad_()
    filters = (torch.rand(2, 2, 1, 3, 3, dtype=torch.float64) + 0.1).requires_grad_()
    assert torch.autograd.gradcheck(lambda a, b, c: nonnegative_deconvolution(a, b, c, groups=2), (x, source, filters))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_autocast_computes_in_fp32_and_stays_finite(dtype):
    torch.manual_seed(0)
    x = torch.rand(1, 4, 6, 6, 6) * 1e3
    source = torch.rand(1, 16, 6, 6, 6) * 1e3
    source[..., :3] = 0  # zero reconstruction in part of the volume: eps must keep the ratio finite
    filters = torch.rand(4, 4, 3, 3, 3)
    with torch.autocast("cpu", dtype=dtype):
        out = nonnegative_deconvolution(x.to(dtype), source.to(dtype), filters, groups=4)
    assert out.dtype == torch.float32
    assert torch.isfinite(out).all()
    expected = nonnegative_deconvolution(x.to(dtype).float(), source.to(dtype).float(), filters, groups=4)
    torch.testing.assert_close(out, expected)


@pytest.mark.parametrize("shapes,groups,message", [
    (((1, 4, 5, 5), (1, 8, 5, 5), (4, 2, 2, 3)), 4, "odd kernel"),
    (((1, 4, 5, 5), (1, 8, 5, 5), (4, 8, 3, 3)), 3, "groups=3"),
    (((1, 4, 5, 5), (1, 8, 5, 6), (4, 2, 3, 3)), 4, "spatial"),
    (((1, 4, 5, 5), (1, 8, 5, 5), (4, 4, 3, 3)), 4, r"\(4, 2, ...\)"),
    (((1, 4, 5, 5), (1, 8, 5, 5, 5), (4, 2, 3, 3)), 4, "same number of dims"),
])
def test_invalid_shapes_raise_value_error_naming_sizes(shapes, groups, message):
    x, source, filters = (torch.rand(s) for s in shapes)
    with pytest.raises(ValueError, match=message):
        nonnegative_deconvolution(x, source, filters, groups)


def test_ndc_layer_shapes_init_and_rectified_filter():
    layer = NDC(channels=8, kernel_size=(1, 3, 3), ratio=4)
    assert layer.filters.shape == (8, 4, 1, 3, 3)  # (C, E/G, *kernel) with G = C
    assert layer.project.bias is not None
    fan_in = 4 * 1 * 3 * 3
    assert layer.filters.abs().max() <= 1 / fan_in ** 0.5  # Kaiming-uniform with a = sqrt(5)
    assert (layer.filters < 0).any()  # a raw parameter: the layer rectifies it at every forward
    x = torch.rand(2, 8, 3, 6, 5)
    out = layer(x)
    assert out.shape == (2, 32, 3, 6, 5)
    source = torch.relu(layer.project(x))
    expected = ndc_update(x.double().numpy(), source.detach().double().numpy(),
                          torch.relu(layer.filters).detach().double().numpy(), 8)
    np.testing.assert_allclose(out.detach().numpy(), expected, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("kernel", [(2, 3), (3, 4, 3)])
def test_ndc_layer_refuses_even_kernels(kernel):
    with pytest.raises(ValueError, match="odd kernel"):
        NDC(channels=4, kernel_size=kernel)
