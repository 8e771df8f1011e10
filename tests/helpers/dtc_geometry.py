"""Geometry fixtures for DTC tests: linear ramps, where they land after a known shift, and a pure sampler."""
import torch

from nnunetv2_deconver.ops.dtc import DeformableTransposedConv


def ramp(size, coefficients):
    """f(i_0, i_1, ...) = sum_a coefficients[a] * i_a on an input grid (pixel-index units)."""
    grids = torch.meshgrid(*[torch.arange(n, dtype=torch.float64) for n in size], indexing="ij")
    return sum(c * g for c, g in zip(coefficients, grids)).float()[None, None]


def expected_ramp(size, stride, coefficients, shift_pixels):
    """The ramp evaluated at output pixel centres moved by shift_pixels (input pixels, per axis), and a
    mask of the outputs whose shifted position stays inside [0, S_in - 1] (no border clamping)."""
    positions = []
    for n, s, shift in zip(size, stride, shift_pixels):
        # align_corners=False: output centre i sits at input coordinate (i + 0.5) / s - 0.5
        positions.append((torch.arange(n * s, dtype=torch.float64) + 0.5) / s - 0.5 + shift)
    grids = torch.meshgrid(*positions, indexing="ij")
    value = sum(c * g for c, g in zip(coefficients, grids))
    inside = torch.ones_like(value, dtype=torch.bool)
    for g, n in zip(grids, size):
        inside &= (g >= 0) & (g <= n - 1)
    return value.float(), inside


def pure_sampler(d, stride, receptive_field, offset_bias, weight_bias):
    """A one-channel DTC with no base, an identity feature branch and constant offsets/weights."""
    dtc = DeformableTransposedConv(1, 1, stride, base="transposed", receptive_field=receptive_field)
    with torch.no_grad():
        dtc.base.weight.zero_()
        dtc.base.bias.zero_()
        dtc.features.weight.fill_(1.0)
        dtc.features.bias.zero_()
        dtc.coordinates.weight.zero_()
        dtc.coordinates.bias[:d] = torch.as_tensor(offset_bias, dtype=torch.float32)
        dtc.coordinates.bias[d:] = torch.as_tensor(weight_bias, dtype=torch.float32)
    return dtc
