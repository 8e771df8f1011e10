"""Deformable transposed convolution (DTC; Sun et al., "DTC: A Deformable Transposed Convolution Module
for Medical Image Segmentation"), for 2D and 3D maps with per-axis (anisotropic) strides.

The math lives in :func:`deformable_sample` (paper eqs. 1 and 2); :class:`DeformableTransposedConv`
holds the two branches of the paper's Fig. 3b and the base up-sampler of Fig. 3a.

Conventions (the paper leaves them open; these are ours, and the tests check them):

* **Shapes.** Input ``x`` is ``(B, C_in, *S_in)`` with ``d = len(S_in)`` in {2, 3} and spatial axes in
  tensor order ``(D, H, W)`` / ``(H, W)``. A stride ``s`` (one int per axis) gives ``S_out = S_in * s``.
* **Feature branch.** A 1x1 conv ``C_in -> C_out`` at the *input* resolution (the paper's "convolution
  before interpolation").
* **Coordinate branch.** A transposed conv ``C_in -> 2d`` with kernel = stride = ``s``, at the output
  resolution. Channels ``0..d-1`` are offsets (``tanh``, in ``[-1, 1]``) and ``d..2d-1`` weights
  (``sigmoid``, in ``[0, 1]``), both in tensor axis order: channel ``a`` moves the sample along spatial
  axis ``a`` of the tensor.
* **Sampling positions.** ``grid_sample``'s normalised coordinates with ``align_corners=False``: the
  map spans ``[-1, 1]`` on every axis and one input pixel is ``2 / S_in`` wide. The identity grid is
  the output pixel centres ``-1 + (2 i + 1) / S_out``, so with zero offsets the result is exactly
  ``F.interpolate(features, scale_factor=s, mode="bilinear"/"trilinear", align_corners=False)``.
  ``P_new = P_grid + lambda * offset * weight`` per axis (eq. 1); the grid's last dimension is built in
  ``grid_sample``'s ``(x, y, z) = (W, H, D)`` order, the reverse of the tensor's.
* **Receptive field r** (in input pixels, per axis): ``lambda_axis = r / S_in_axis``. Since
  ``|offset * weight| <= 1``, a sample moves at most ``r / 2`` input pixels either way, i.e. anywhere in
  a window ``r`` input pixels wide centred on its grid position. The paper's default ``r = 2`` is a
  reach of one pixel width each way ("default set to one pixel-width ... a base receptive field of 2",
  Sec. 3.2). The paper also writes "lambda is 1 divided by the size of the input feature map"; in
  ``[-1, 1]`` coordinates that is half a pixel, i.e. ``r = 1`` here, so it can be had by passing
  ``receptive_field=1``. ``r`` may be any positive number, and ``lambda`` is per axis because
  nnU-Net's maps are anisotropic.
* **Unrestricted** (``receptive_field=None``, the paper's "infinite"/"full" setting): no lambda
  scaling (``lambda = 1``), so a sample moves up to half the map either way, and the map centre can
  reach every point of the map.
* **Padding.** ``padding_mode="border"`` (as DySample): a sample pushed outside the map reads the
  nearest edge value; this is also what makes the zero-offset case match ``F.interpolate`` at the edges.
* **Base up-sampler** (Fig. 3a), summed with the sampled features: ``"transposed"`` (a transposed conv,
  kernel = stride, ``C_in -> C_out``, as in nnU-Net and Deconver), ``"linear"`` (bilinear/trilinear
  interpolation of ``x``, which the paper's Fig. 1a describes as channel-preserving; if
  ``C_in != C_out`` a 1x1 conv ``C_in -> C_out`` with its own weights is applied first, which equals
  interpolating then projecting because both are linear and interpolation weights sum to one), or any
  ``nn.Module`` (e.g. an existing network's transposed conv, see :meth:`DeformableTransposedConv.wrap`).
* **Initialisation.** The offset rows of the coordinate branch (weights and bias) start at zero, so
  ``tanh(0) = 0`` and an untrained DTC is the base up-sampler plus the interpolated feature branch.
  Gradients still reach the offset rows at step one (``d P / d offset = lambda * weight`` with
  ``weight = sigmoid(.) > 0``); the weight rows get no gradient until the offsets move away from zero
  (``d P / d weight = lambda * offset = 0``).
* **Precision.** Positions are computed and sampled in fp32 even under autocast: in bf16 a coordinate
  near 1 is only resolved to ``2**-8``, half a pixel of a 256-wide map.
"""
from typing import Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from torch import nn

from nnunetv2_deconver.ops.by_dimension import CONV, CONV_TRANSPOSED, LINEAR_MODE
from nnunetv2_deconver.ops.checks import check_integers, check_receptive_field, is_integer
from nnunetv2_deconver.ops.precision import autocast_disabled

__all__ = ["deformable_sample", "sampling_lambda", "DeformableTransposedConv"]



def sampling_lambda(input_size: Sequence[int], receptive_field: Optional[float] = 2.0) -> Tuple[float, ...]:
    """Per-axis lambda of eq. (1) in ``grid_sample``'s normalised units (tensor axis order).

    ``r / S_in_axis`` for a receptive field of ``r`` input pixels; 1.0 on every axis when unrestricted
    (``receptive_field=None``).
    """
    check_receptive_field(receptive_field)
    if receptive_field is None:
        return tuple(1.0 for _ in input_size)
    return tuple(float(receptive_field) / int(size) for size in input_size)


def deformable_sample(features: torch.Tensor, offsets: torch.Tensor, weights: torch.Tensor,
                      receptive_field: Optional[float] = 2.0) -> torch.Tensor:
    """Sample ``features`` at ``P_grid + lambda * offsets * weights`` (paper eqs. 1 and 2).

    Args:
        features: ``(B, C, *S_in)``, the feature branch at input resolution.
        offsets: ``(B, d, *S_out)`` in ``[-1, 1]``; channel ``a`` moves along tensor spatial axis ``a``.
        weights: ``(B, d, *S_out)`` in ``[0, 1]``, same axis order.
        receptive_field: input pixels the sample may cover per axis (window width), or None for unrestricted.

    Returns:
        ``(B, C, *S_out)`` in fp32 (bilinear/trilinear sampling, border padding, ``align_corners=False``).
    """
    dim = features.dim() - 2
    if dim not in (2, 3):
        raise ValueError(f"features must be (B, C, H, W) or (B, C, D, H, W), got shape {tuple(features.shape)}")
    expected = (features.shape[0], dim)
    if tuple(offsets.shape[:2]) != expected or offsets.shape != weights.shape or offsets.dim() != dim + 2:
        raise ValueError(f"offsets and weights must both be (B, {dim}, *S_out) with B={features.shape[0]}, got "
                         f"{tuple(offsets.shape)} and {tuple(weights.shape)}")
    input_size, output_size = features.shape[2:], offsets.shape[2:]
    lambdas = sampling_lambda(input_size, receptive_field)
    with autocast_disabled(features.device.type):
        displacement = offsets.float() * weights.float()
        axes = []
        for a, (size, lam) in enumerate(zip(output_size, lambdas)):
            # output pixel centres in normalised units, broadcast along axis a only
            centres = (2 * torch.arange(size, device=features.device, dtype=torch.float32) + 1) / size - 1
            view = [1] * (dim + 1)
            view[a + 1] = size
            axes.append(centres.view(view) + lam * displacement[:, a])
        grid = torch.stack(axes[::-1], dim=-1)  # (B, *S_out, d) in grid_sample's (x, y, z) order
        return F.grid_sample(features.float(), grid, mode="bilinear", padding_mode="border", align_corners=False)


class _LinearBase(nn.Module):
    """Bilinear/trilinear up-sampling of the input, after a 1x1 projection when the channels differ."""

    def __init__(self, in_channels: int, out_channels: int, stride: Tuple[int, ...]):
        super().__init__()
        dim = len(stride)
        self.stride = stride
        self.projection = CONV[dim](in_channels, out_channels, 1) if in_channels != out_channels else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.projection is not None:
            x = self.projection(x)
        return F.interpolate(x, scale_factor=self.stride, mode=LINEAR_MODE[len(self.stride)], align_corners=False)


class DeformableTransposedConv(nn.Module):
    """DTC up-sampler: ``base(x) + deformable_sample(feature(x), tanh(o), sigmoid(w))`` (paper Fig. 3).

    Args:
        in_channels, out_channels: ``C_in``, ``C_out``.
        stride: up-sampling factor, an int or one int per spatial axis (e.g. ``(1, 2, 2)``).
        dim: 2 or 3 spatial dims; inferred from ``stride`` when it is a sequence.
        base: ``"transposed"``, ``"linear"`` or an ``nn.Module`` mapping ``(B, C_in, *S_in)`` to
            ``(B, C_out, *S_in * stride)``. See the module docstring.
        receptive_field: input pixels per axis a sample may cover (window width; default 2, the
            paper's default), or None for unrestricted.

    State-dict keys: ``base.*``, ``features.*`` (1x1 conv), ``coordinates.*`` (transposed conv).
    """

    def __init__(self, in_channels: int, out_channels: int, stride: Union[int, Sequence[int]], dim: int = None,
                 base: Union[str, nn.Module] = "transposed", receptive_field: Optional[float] = 2.0):
        super().__init__()
        if is_integer(stride):
            if dim not in (2, 3):
                raise ValueError(f"dim must be 2 or 3 when stride is a single int, got dim={dim}")
            stride = (stride,) * dim
        stride = tuple(stride)
        if len(stride) not in (2, 3) or (dim is not None and len(stride) != dim):
            raise ValueError(f"stride must have one entry per spatial axis (2 or 3 of them), got {stride} "
                             f"with dim={dim}")
        check_integers(list(stride), "DTC stride entries")
        stride = tuple(int(s) for s in stride)
        check_receptive_field(receptive_field)
        dim = len(stride)
        self.dim, self.stride, self.receptive_field = dim, stride, receptive_field
        self.in_channels, self.out_channels = in_channels, out_channels
        if base == "transposed":
            base = CONV_TRANSPOSED[dim](in_channels, out_channels, stride, stride=stride, bias=True)
        elif base == "linear":
            base = _LinearBase(in_channels, out_channels, stride)
        elif not isinstance(base, nn.Module):
            raise ValueError(f"base must be 'transposed', 'linear' or an nn.Module, got {base!r}")
        self.base = base
        self.features = CONV[dim](in_channels, out_channels, 1, bias=True)
        self.coordinates = CONV_TRANSPOSED[dim](in_channels, 2 * dim, stride, stride=stride, bias=True)
        self._zero_offsets()

    @classmethod
    def wrap(cls, transposed_conv: nn.Module, receptive_field: Optional[float] = 2.0) -> "DeformableTransposedConv":
        """A DTC whose base is an existing transposed conv (kernel = stride, no padding), weights kept."""
        if not isinstance(transposed_conv, (nn.ConvTranspose2d, nn.ConvTranspose3d)):
            raise ValueError(f"wrap expects nn.ConvTranspose2d/3d, got {type(transposed_conv).__name__}")
        conv = transposed_conv
        if (tuple(conv.kernel_size) != tuple(conv.stride) or any(conv.padding) or any(conv.output_padding)
                or any(d != 1 for d in conv.dilation) or conv.groups != 1):
            raise ValueError(f"wrap needs a transposed conv with kernel = stride, no padding, dilation or groups "
                             f"(output size = input size * stride); got kernel {conv.kernel_size}, stride "
                             f"{conv.stride}, padding {conv.padding}, output_padding {conv.output_padding}")
        dtc = cls(conv.in_channels, conv.out_channels, tuple(conv.stride), base=conv,
                  receptive_field=receptive_field)
        return dtc.to(device=conv.weight.device, dtype=conv.weight.dtype)

    def _zero_offsets(self) -> None:
        with torch.no_grad():
            self.coordinates.weight[:, :self.dim].zero_()
            self.coordinates.bias[:self.dim].zero_()

    def reset_parameters(self) -> None:
        """Re-draw the branches' default init, then zero the offset rows (called by ``Deconver.initialize``)."""
        for module in (self.base, self.features, self.coordinates):
            for sub in module.modules():
                if hasattr(sub, "reset_parameters") and sub is not self:
                    sub.reset_parameters()
        self._zero_offsets()

    def _check_input(self, x: torch.Tensor) -> None:
        if x.dim() != self.dim + 2 or x.shape[1] != self.in_channels:
            raise ValueError(f"DeformableTransposedConv({self.in_channels} -> {self.out_channels}, {self.dim}D) got "
                             f"input of shape {tuple(x.shape)}; expected (B, {self.in_channels}, "
                             f"{', '.join('S' for _ in range(self.dim))})")

    def offsets_and_weights(self, x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """``tanh`` offsets and ``sigmoid`` weights, each ``(B, d, *S_out)`` in fp32, tensor axis order."""
        coordinates = self.coordinates(x).float()
        return torch.tanh(coordinates[:, :self.dim]), torch.sigmoid(coordinates[:, self.dim:])

    def displacement(self, x: torch.Tensor) -> torch.Tensor:
        """Learned sampling displacement ``lambda * offset * weight`` in input pixels, ``(B, d, *S_out)``."""
        self._check_input(x)
        offsets, weights = self.offsets_and_weights(x)
        lambdas = sampling_lambda(x.shape[2:], self.receptive_field)
        # one input pixel along axis a is 2 / S_in_a normalised units
        scale = torch.tensor([lam * size / 2 for lam, size in zip(lambdas, x.shape[2:])], device=x.device)
        return offsets * weights * scale.view(1, -1, *([1] * self.dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self._check_input(x)
        base = self.base(x)
        expected = (x.shape[0], self.out_channels, *(size * s for size, s in zip(x.shape[2:], self.stride)))
        if tuple(base.shape) != expected:
            raise ValueError(f"the base up-sampler returned shape {tuple(base.shape)}, expected {expected} "
                             f"(C_out = {self.out_channels}, stride {self.stride})")
        offsets, weights = self.offsets_and_weights(x)
        sampled = deformable_sample(self.features(x), offsets, weights, self.receptive_field)
        return base + sampled.to(base.dtype)

    def extra_repr(self) -> str:
        return f"stride={self.stride}, receptive_field={self.receptive_field}"
