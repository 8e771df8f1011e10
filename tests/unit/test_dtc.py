"""DTC geometry: every expected value comes from F.interpolate, F.conv*, or the receptive-field formula
``max shift = r / 2 input pixels either way`` (a window r pixels wide), never from the module itself."""
import math
import os

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from nnunetv2_deconver.ops.dtc import DeformableTransposedConv, deformable_sample, sampling_lambda

from helpers.dtc_geometry import expected_ramp as _expected_ramp, pure_sampler as _pure_sampler, ramp as _ramp

CONV = {2: F.conv2d, 3: F.conv3d}
CONV_T = {2: F.conv_transpose2d, 3: F.conv_transpose3d}
LINEAR = {2: "bilinear", 3: "trilinear"}


def _reference(dtc: DeformableTransposedConv, x: torch.Tensor) -> torch.Tensor:
    """Base transposed conv plus linear interpolation of the 1x1 feature branch, written out with F."""
    d = x.dim() - 2
    base = CONV_T[d](x, dtc.base.weight, dtc.base.bias, stride=dtc.stride)
    features = CONV[d](x, dtc.features.weight, dtc.features.bias)
    return base + F.interpolate(features, scale_factor=dtc.stride, mode=LINEAR[d], align_corners=False)


@pytest.mark.parametrize("stride, size", [((2, 2), (5, 7)), ((3, 1), (4, 6)), ((2, 2, 2), (3, 4, 5)),
                                          ((1, 2, 2), (4, 3, 5)), ((2, 1, 3), (3, 4, 2))])
def test_zero_offsets_are_interpolation_plus_base(stride, size):
    torch.manual_seed(0)
    dtc = DeformableTransposedConv(3, 4, stride, receptive_field=4)
    # scramble the weight rows so the test shows that zero offsets make the weights irrelevant
    with torch.no_grad():
        dtc.coordinates.weight[:, len(stride):].normal_()
    x = torch.randn(2, 3, *size)
    out = dtc(x)
    assert out.shape == (2, 4, *(n * s for n, s in zip(size, stride)))
    torch.testing.assert_close(out, _reference(dtc, x), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("channels", [(3, 3), (3, 5)])
@pytest.mark.parametrize("stride", [(2, 2), (1, 2, 2)])
def test_linear_base(channels, stride):
    torch.manual_seed(1)
    c_in, c_out = channels
    d = len(stride)
    dtc = DeformableTransposedConv(c_in, c_out, stride, base="linear")
    x = torch.randn(1, c_in, *([4] * d))
    up = lambda t: F.interpolate(t, scale_factor=stride, mode=LINEAR[d], align_corners=False)  # noqa: E731
    base_input = x if c_in == c_out else CONV[d](x, dtc.base.projection.weight, dtc.base.projection.bias)
    expected = up(base_input) + up(CONV[d](x, dtc.features.weight, dtc.features.bias))
    torch.testing.assert_close(dtc(x), expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("size, stride", [((9, 11), (2, 2)), ((6, 9, 11), (1, 2, 2))])
def test_constant_offset_moves_only_along_its_axis(size, stride):
    d = len(size)
    coefficients = (3.0, 5.0, 7.0)[:d]  # distinct per axis, so a swapped axis order shows
    receptive_field, offset, weight = 2.0, 0.5, 1.0
    shift = receptive_field / 2 * offset * weight  # input pixels, from the definition of r
    x = _ramp(size, coefficients)
    for axis in range(d):
        offsets = [0.0] * d
        offsets[axis] = math.atanh(offset)
        dtc = _pure_sampler(d, stride, receptive_field, offsets, [30.0] * d)  # sigmoid(30) == 1 in fp32
        shifts = [0.0] * d
        shifts[axis] = shift
        expected, inside = _expected_ramp(size, stride, coefficients, shifts)
        out = dtc(x)[0, 0]
        torch.testing.assert_close(out[inside], expected[inside], rtol=1e-5, atol=1e-4)
        unshifted, _ = _expected_ramp(size, stride, coefficients, [0.0] * d)
        assert not torch.allclose(out[inside], unshifted[inside]), "the offset had no effect"


@pytest.mark.parametrize("receptive_field, size, stride", [(2, (8, 14), (2, 2)), (4, (10, 16), (2, 1)),
                                                           (10, (24, 30), (2, 2)), (2, (6, 8, 12), (1, 2, 2)),
                                                           (4, (8, 10, 12), (2, 2, 2)), (3.5, (9, 10, 11), (2, 2, 1))])
def test_receptive_field_bounds_the_shift(receptive_field, size, stride):
    d = len(size)
    coefficients = (3.0, 5.0, 7.0)[:d]
    x = _ramp(size, coefficients)
    outputs = {}
    for sign in (1, -1):
        # saturated tanh and sigmoid: offset * weight = sign on every axis, the largest achievable
        dtc = _pure_sampler(d, stride, receptive_field, [sign * 20.0] * d, [30.0] * d)
        shift = [sign * receptive_field / 2] * d  # r / 2 input pixels of that axis, whatever its size
        expected, inside = _expected_ramp(size, stride, coefficients, shift)
        assert inside.any()
        outputs[sign] = dtc(x)[0, 0]
        torch.testing.assert_close(outputs[sign][inside], expected[inside], rtol=1e-5, atol=1e-4)
        displacement = dtc.displacement(x)[0]
        for axis in range(d):
            torch.testing.assert_close(displacement[axis], torch.full_like(displacement[axis], shift[axis]))
    # the two extremes are r input pixels apart on every axis: the window is r pixels wide
    _, inside_both = _expected_ramp(size, stride, coefficients, [receptive_field / 2] * d)
    _, inside_minus = _expected_ramp(size, stride, coefficients, [-receptive_field / 2] * d)
    both = inside_both & inside_minus
    torch.testing.assert_close((outputs[1] - outputs[-1])[both],
                               torch.full_like(outputs[1][both], receptive_field * sum(coefficients)),
                               rtol=1e-5, atol=1e-3)


def test_unrestricted_moves_in_normalised_units():
    size, stride = (20, 10), (2, 2)
    offset = 0.2
    x = _ramp(size, (3.0, 5.0))
    dtc = _pure_sampler(2, stride, None, [math.atanh(offset)] * 2, [30.0] * 2)
    # no lambda: the position moves by offset in [-1, 1] units, where one input pixel is 2 / S_in
    shift = [offset / (2 / n) for n in size]
    expected, inside = _expected_ramp(size, stride, (3.0, 5.0), shift)
    torch.testing.assert_close(dtc(x)[0, 0][inside], expected[inside], rtol=1e-5, atol=1e-4)


def test_sampling_lambda_formula():
    assert sampling_lambda((4, 8, 16), 2) == (0.5, 0.25, 0.125)
    assert sampling_lambda((5, 7), None) == (1.0, 1.0)


def test_deformable_sample_zero_offsets_is_interpolation():
    torch.manual_seed(2)
    features = torch.randn(2, 3, 4, 5, 6)
    offsets = torch.zeros(2, 3, 8, 10, 6)
    weights = torch.rand(2, 3, 8, 10, 6)
    expected = F.interpolate(features, size=(8, 10, 6), mode="trilinear", align_corners=False)
    torch.testing.assert_close(deformable_sample(features, offsets, weights, 2.0), expected, rtol=1e-5, atol=1e-5)


def test_gradients_reach_the_offset_branch():
    torch.manual_seed(3)
    dtc = DeformableTransposedConv(4, 2, (1, 2, 2))
    x = torch.randn(2, 4, 3, 5, 6)
    dtc(x).square().sum().backward()
    assert dtc.coordinates.weight.grad[:, :3].abs().sum() > 0, "no gradient reached the offset rows"
    assert dtc.coordinates.bias.grad[:3].abs().sum() > 0
    assert dtc.features.weight.grad.abs().sum() > 0 and dtc.base.weight.grad.abs().sum() > 0


@pytest.mark.parametrize("stride", [(2, 2), (1, 2, 2)])
def test_finite_under_bf16_autocast(stride):
    torch.manual_seed(4)
    dtc = DeformableTransposedConv(4, 3, stride, receptive_field=10)
    with torch.no_grad():
        dtc.coordinates.weight.normal_()  # non-zero offsets, so the deformable path is exercised
    x = torch.randn(2, 4, *([6] * len(stride)))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = dtc(x)
    assert out.dtype == torch.bfloat16 and torch.isfinite(out).all()
    out.float().sum().backward()
    assert all(torch.isfinite(p.grad).all() for p in dtc.parameters())


def test_wrap_keeps_the_base_and_reset_keeps_offsets_zero():
    torch.manual_seed(5)
    conv = nn.ConvTranspose3d(6, 3, (1, 2, 2), stride=(1, 2, 2))
    weight = conv.weight.detach().clone()
    dtc = DeformableTransposedConv.wrap(conv, receptive_field=4)
    assert dtc.base is conv and dtc.stride == (1, 2, 2) and torch.equal(dtc.base.weight, weight)
    x = torch.randn(1, 6, 2, 3, 4)
    torch.testing.assert_close(dtc(x), _reference(dtc, x), rtol=1e-5, atol=1e-5)
    with torch.no_grad():
        dtc.coordinates.weight.normal_()
    dtc.apply(lambda m: m.reset_parameters() if hasattr(m, "reset_parameters") else None)
    assert dtc.coordinates.weight[:, :3].abs().sum() == 0 and dtc.coordinates.bias[:3].abs().sum() == 0


def test_bad_input_raises_value_error():
    dtc = DeformableTransposedConv(2, 2, (2, 2))
    with pytest.raises(ValueError, match="input of shape"):
        dtc(torch.randn(1, 2, 4, 4, 4))
    with pytest.raises(ValueError, match="input of shape"):
        dtc(torch.randn(1, 3, 4, 4))
    with pytest.raises(ValueError, match="base up-sampler returned"):
        DeformableTransposedConv(2, 2, (2, 2), base=nn.ConvTranspose2d(2, 2, 3, stride=3))(torch.randn(1, 2, 4, 4))
    with pytest.raises(ValueError, match="kernel = stride"):
        DeformableTransposedConv.wrap(nn.ConvTranspose2d(2, 2, 4, stride=2, padding=1))
    with pytest.raises(ValueError, match="receptive_field"):
        DeformableTransposedConv(2, 2, 2, dim=2, receptive_field=0)
    with pytest.raises(ValueError, match="receptive_field"):
        DeformableTransposedConv(2, 2, 2, dim=2, receptive_field=float("nan"))
    with pytest.raises(ValueError, match="one entry per spatial axis"):
        DeformableTransposedConv(2, 2, (2, 2, 2, 2))
    with pytest.raises(ValueError, match="dim must be 2 or 3"):
        DeformableTransposedConv(2, 2, 2)
    with pytest.raises(ValueError, match="base must be"):
        DeformableTransposedConv(2, 2, (2, 2), base="nearest")
    with pytest.raises(ValueError, match="offsets and weights"):
        deformable_sample(torch.randn(1, 2, 4, 4), torch.zeros(1, 3, 8, 8), torch.zeros(1, 3, 8, 8))


def test_display_helpers():
    from nnunetv2_deconver.tools.dtc_display import DisplacementError, last_dtc_layer, sampling_density

    assert np.array_equal(sampling_density(np.zeros((2, 3, 4))), np.ones((3, 4)))
    # every sample moved one column right: column 0 is never read, the last column is read twice
    # (its own sample and, clamped at the border, the one pushed off the image)
    shifted = np.stack([np.zeros((3, 4)), np.ones((3, 4))])
    expected = np.array([[0, 1, 1, 2]] * 3, dtype=float)
    assert np.array_equal(sampling_density(shifted), expected)
    with pytest.raises(DisplacementError, match="no DTC layer"):
        last_dtc_layer(nn.Sequential(nn.ConvTranspose2d(2, 2, 2, stride=2)))
    layers = nn.Sequential(DeformableTransposedConv(4, 2, (2, 2)), DeformableTransposedConv(2, 1, (2, 2)))
    assert last_dtc_layer(layers) is layers[1]


@pytest.mark.parametrize("output,message", [("FOLDER", "is a folder; give a PNG file"),
                                            ("x.txt", "give a file name ending in .png"),
                                            ("missing/x.png", "does not exist or cannot be written")])
def test_dtc_displacement_refuses_an_output_it_cannot_write_before_loading(tmp_path, capsys, output, message):
    from nnunetv2_deconver.tools import cli
    (tmp_path / "FOLDER").mkdir()
    before = sorted(os.listdir(tmp_path))
    output = str(tmp_path / output)
    # the model folder does not exist: the output is checked first, so that is not what fails
    assert cli.main(["dtc-displacement", str(tmp_path / "no_model"), str(tmp_path / "case_0000.nii.gz"),
                     "-o", output]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    errors = [line for line in err if "error:" in line]
    assert len(errors) == 1 and message in errors[0], err
    assert sorted(os.listdir(tmp_path)) == before and os.listdir(tmp_path / "FOLDER") == []
