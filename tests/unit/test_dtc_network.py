"""DTC inside Deconver (``upsample="dtc"``) and inside nnU-Net's own U-Nets (trainer wrapping)."""
import pytest
import torch
from torch import nn

from nnunetv2_deconver.ops.dtc import DeformableTransposedConv
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
    with pytest.raises(ValueError, match="upsample"):
        Deconver(**KWARGS, upsample="nearest")


def _configuration(class_name: str, arch_kwargs: dict):
    from nnunetv2.utilities.plans_handling.plans_handler import ConfigurationManager
    return ConfigurationManager({"architecture": {"network_class_name": class_name, "arch_kwargs": arch_kwargs,
                                                  "_kw_requires_import": ["conv_op", "norm_op", "nonlin"]}})


_UNET_KWARGS = dict(n_stages=3, features_per_stage=[4, 8, 16], conv_op="torch.nn.modules.conv.Conv3d",
                    kernel_sizes=[[1, 3, 3], [3, 3, 3], [3, 3, 3]], strides=[[1, 1, 1], [1, 2, 2], [2, 2, 2]],
                    conv_bias=True, norm_op="torch.nn.modules.instancenorm.InstanceNorm3d",
                    norm_op_kwargs={"eps": 1e-5, "affine": True}, dropout_op=None, dropout_op_kwargs=None,
                    nonlin="torch.nn.LeakyReLU", nonlin_kwargs={"inplace": True})
_PLANS = {
    "dynamic_network_architectures.architectures.unet.PlainConvUNet":
        dict(_UNET_KWARGS, n_conv_per_stage=[2, 2, 2], n_conv_per_stage_decoder=[2, 2]),
    "dynamic_network_architectures.architectures.unet.ResidualEncoderUNet":
        dict(_UNET_KWARGS, n_blocks_per_stage=[1, 2, 2], n_conv_per_stage_decoder=[1, 1]),
}


@pytest.mark.parametrize("class_name", sorted(_PLANS))
def test_unet_dtc_trainer_wraps_every_transposed_conv(class_name):
    from nnunetv2.utilities.get_network_from_plans import get_network_from_plans
    from nnunetv2_deconver.trainers.variants.network_architecture.nnUNetTrainerUNetDTC import (
        nnUNetTrainerUNetDTC, nnUNetTrainerUNetDTC_rf10)

    torch.manual_seed(2)
    configuration = _configuration(class_name, _PLANS[class_name])
    net = nnUNetTrainerUNetDTC_rf10.build_network_architecture(None, configuration, 1, 3, True)
    layers = list(net.decoder.transpconvs)
    assert len(layers) == 2 and all(isinstance(m, DeformableTransposedConv) for m in layers)
    assert [m.stride for m in layers] == [(2, 2, 2), (1, 2, 2)] and layers[0].receptive_field == 10
    assert all(m.coordinates.weight[:, :3].abs().sum() == 0 for m in layers)
    x = torch.randn(2, 1, 4, 8, 8)
    assert [tuple(o.shape) for o in net(x)] == [(2, 3, 4, 8, 8), (2, 3, 4, 4, 4)]
    # with the feature branches silenced the network is the stock one carrying the same weights
    for m in layers:
        with torch.no_grad():
            m.features.weight.zero_()
            m.features.bias.zero_()
    stock = get_network_from_plans(class_name, _PLANS[class_name], ["conv_op", "norm_op", "nonlin"], 1, 3,
                                   deep_supervision=False)
    stock.load_state_dict(_without_dtc_keys(net.state_dict()))
    net.decoder.deep_supervision = False
    net.eval(), stock.eval()
    torch.testing.assert_close(net(x), stock(x))
    assert nnUNetTrainerUNetDTC.dtc_receptive_field == 2.0


def test_unet_dtc_trainer_rejects_a_network_without_transposed_convs():
    from nnunetv2_deconver.trainers.variants.network_architecture.nnUNetTrainerUNetDTC import nnUNetTrainerUNetDTC

    configuration = _configuration("nnunetv2_deconver.network.Deconver",
                                   dict(KWARGS, conv_op="torch.nn.modules.conv.Conv3d", num_classes=None,
                                        input_channels=None, upsample="dtc"))
    configuration.configuration["architecture"]["arch_kwargs"].pop("num_classes")
    configuration.configuration["architecture"]["arch_kwargs"].pop("input_channels")
    configuration.configuration["architecture"]["_kw_requires_import"] = ["conv_op"]
    with pytest.raises(ValueError, match="decoder.transpconvs"):
        nnUNetTrainerUNetDTC.build_network_architecture(None, configuration, 1, 3, False)


def test_unet_dtc_compiles_under_autocast():
    """Dynamo traces the whole DTC U-Net in one graph (no breaks) and autograd goes through it in bf16."""
    from nnunetv2_deconver.trainers.variants.network_architecture.nnUNetTrainerUNetDTC import nnUNetTrainerUNetDTC

    torch.manual_seed(3)
    class_name = "dynamic_network_architectures.architectures.unet.PlainConvUNet"
    net = nnUNetTrainerUNetDTC.build_network_architecture(None, _configuration(class_name, _PLANS[class_name]),
                                                          1, 3, True)
    for m in net.decoder.transpconvs:
        with torch.no_grad():
            m.coordinates.weight.normal_()
    x = torch.randn(2, 1, 4, 8, 8)
    expected = net(x)
    compiled = torch.compile(net, backend="aot_eager", fullgraph=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = compiled(x)
    assert all(torch.isfinite(o).all() for o in out)
    sum(o.float().sum() for o in out).backward()
    assert net.decoder.transpconvs[0].coordinates.weight.grad.abs().sum() > 0
    torch.testing.assert_close(compiled(x), expected)
