"""DTC inside Deconver (``upsample="dtc"``) and inside nnU-Net's own U-Nets (trainer wrapping)."""
import pytest
import torch
from torch import nn

from nnunetv2_deconver.dtc import DeformableTransposedConv
from nnunetv2_deconver.network import Deconver

KWARGS = dict(input_channels=1, n_stages=3, features_per_stage=[4, 8, 16], conv_op=nn.Conv3d,
              kernel_sizes=[[1, 3, 3], [3, 3, 3], [3, 3, 3]], strides=[[1, 1, 1], [1, 2, 2], [2, 2, 2]],
              num_classes=3, ndc_ratio=2)


def _without_dtc_keys(state: dict) -> dict:
    """The DTC network's state with its transposed convs renamed to the plain network's keys."""
    out = {}
    for key, value in state.items():
        if ".features." in key or ".coordinates." in key:
            continue
        out[key.replace(".base.", ".")] = value
    return out


def test_default_keeps_plain_transposed_convs():
    net = Deconver(**KWARGS)
    assert net.upsample == "transposed"
    assert all(type(m) is nn.ConvTranspose3d for m in net.decoder.transpconvs)
    assert not any("base" in k or "coordinates" in k for k in net.state_dict())


@pytest.mark.parametrize("deep_supervision", [True, False])
def test_dtc_network_shapes_and_strides(deep_supervision):
    torch.manual_seed(0)
    net = Deconver(**KWARGS, deep_supervision=deep_supervision, upsample="dtc", dtc_receptive_field=4)
    strides = [tuple(m.stride) for m in net.decoder.transpconvs]
    assert strides == [(2, 2, 2), (1, 2, 2)]  # deepest first
    assert all(isinstance(m, DeformableTransposedConv) and m.receptive_field == 4 for m in net.decoder.transpconvs)
    out = net(torch.randn(2, 1, 4, 8, 8))
    shapes = [tuple(o.shape) for o in out] if deep_supervision else [tuple(out.shape)]
    expected = [(2, 3, 4, 8, 8), (2, 3, 4, 4, 4)] if deep_supervision else [(2, 3, 4, 8, 8)]
    assert shapes == expected


def test_dtc_with_silent_feature_branch_equals_plain_network():
    """With the feature branch zeroed, DTC adds nothing: the plain network with the same weights."""
    torch.manual_seed(1)
    dtc_net = Deconver(**KWARGS, upsample="dtc")
    dtc_net.apply(Deconver.initialize)
    for m in dtc_net.decoder.transpconvs:
        assert m.coordinates.weight[:, :3].abs().sum() == 0, "initialize must keep the offset rows at zero"
        with torch.no_grad():
            m.features.weight.zero_()
            m.features.bias.zero_()
            m.coordinates.weight.normal_()  # even with moving samples: the sampled map is zero
    plain = Deconver(**KWARGS)
    plain.load_state_dict(_without_dtc_keys(dtc_net.state_dict()))
    x = torch.randn(1, 1, 4, 8, 8)
    torch.testing.assert_close(dtc_net(x), plain(x))


def test_dtc_network_cost_estimate_grows():
    plain, dtc = Deconver(**KWARGS), Deconver(**KWARGS, upsample="dtc")
    assert dtc.compute_conv_feature_map_size((4, 8, 8)) > plain.compute_conv_feature_map_size((4, 8, 8))


def test_bad_upsample_is_rejected():
    with pytest.raises(AssertionError, match="upsample"):
        Deconver(**KWARGS, upsample="nearest")
