"""Deconver as nnU-Net builds and uses it: deep supervision, anisotropic plans, errors, init."""
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
from nnunetv2.utilities.get_network_from_plans import get_network_from_plans

from nnunetv2_deconver import Deconver
from nnunetv2_deconver.network.blocks import DeconverBlock

ISOTROPIC = dict(n_stages=4, features_per_stage=[8, 16, 32, 64], conv_op=torch.nn.Conv3d,
                 kernel_sizes=[[3, 3, 3]] * 4, strides=[[1, 1, 1], [2, 2, 2], [2, 2, 2], [2, 2, 2]])
ANISOTROPIC = dict(n_stages=5, features_per_stage=[8, 16, 32, 64, 64], conv_op=torch.nn.Conv3d,
                   kernel_sizes=[[1, 3, 3], [1, 3, 3], [3, 3, 3], [3, 3, 3], [3, 3, 3]],
                   strides=[[1, 1, 1], [1, 2, 2], [2, 2, 2], [2, 2, 2], [1, 2, 2]])
TWO_D = dict(n_stages=4, features_per_stage=[8, 16, 32, 32], conv_op=torch.nn.Conv2d,
             kernel_sizes=[[3, 3]] * 4, strides=[[1, 1], [2, 2], [2, 1], [2, 2]])


def _nnunet_scales(strides):
    """nnU-Net's own deep-supervision scale arithmetic, run on a stand-in for the trainer."""
    trainer = SimpleNamespace(enable_deep_supervision=True,
                              configuration_manager=SimpleNamespace(pool_op_kernel_sizes=strides))
    return nnUNetTrainer._get_deep_supervision_scales(trainer)


@pytest.mark.parametrize("plan,patch", [(ISOTROPIC, (16, 16, 24)), (ANISOTROPIC, (4, 32, 32)), (TWO_D, (32, 16))])
def test_deep_supervision_outputs_follow_nnunet(plan, patch):
    net = Deconver(input_channels=2, num_classes=3, deep_supervision=True, **plan)
    outputs = net(torch.rand(2, 2, *patch))
    scales = _nnunet_scales(plan["strides"])
    assert len(outputs) == len(scales) == plan["n_stages"] - 1
    for out, scale in zip(outputs, scales):  # highest resolution first
        assert tuple(out.shape) == (2, 3, *(int(round(p * s)) for p, s in zip(patch, scale)))
    net.decoder.deep_supervision = False
    single = net(torch.rand(1, 2, *patch))
    assert torch.is_tensor(single) and tuple(single.shape) == (1, 3, *patch)


def test_heads_are_seg_layers_and_skipped_by_pretrained_weight_loading():
    net = Deconver(input_channels=1, num_classes=2, **ISOTROPIC)
    head_keys = [k for k in net.state_dict() if ".seg_layers." in k]
    assert len(head_keys) == 2 * (ISOTROPIC["n_stages"] - 1)  # weight and bias per decoder stage


def test_strides_and_kernels_are_honoured_per_axis():
    net = Deconver(input_channels=1, num_classes=2, **ANISOTROPIC)
    down = [stage[0] for stage in net.encoder.stages[1:]]
    assert [tuple(c.stride) for c in down] == [tuple(s) for s in ANISOTROPIC["strides"][1:]]
    assert [tuple(c.kernel_size) for c in down] == [tuple(s) for s in ANISOTROPIC["strides"][1:]]
    up = list(net.decoder.transpconvs)
    assert [tuple(c.stride) for c in up] == [tuple(s) for s in ANISOTROPIC["strides"][1:]][::-1]
    filters = [stage[1].mixer.ndc.filters.shape[2:] for stage in net.encoder.stages]
    assert [tuple(f) for f in filters] == [tuple(k) for k in ANISOTROPIC["kernel_sizes"]]
    assert tuple(net.encoder.stages[0][0].kernel_size) == (1, 3, 3)


def test_patch_not_divisible_by_strides_is_a_clear_error():
    net = Deconver(input_channels=1, num_classes=2, **ANISOTROPIC)
    with pytest.raises(ValueError, match=r"not divisible by the product of the strides \(4, 16, 16\)"):
        net(torch.rand(1, 1, 8, 40, 32))


@pytest.mark.parametrize("change,message", [
    (dict(kernel_sizes=[[3, 3, 3], [2, 2, 2], [3, 3, 3], [3, 3, 3]]), "odd kernel sizes"),
    (dict(strides=[[2, 2, 2]] * 4), "strides\\[0\\] must be 1"),
    (dict(ndc_groups=3), "ndc_groups=3"),
    (dict(n_stages=5), "one entry per stage"),
])
def test_bad_topology_is_refused_with_a_message(change, message):
    with pytest.raises(ValueError, match=message):
        Deconver(input_channels=1, num_classes=2, **{**ISOTROPIC, **change})


def test_built_by_nnunet_from_a_plan_with_dotted_names():
    arch_kwargs = {**ANISOTROPIC, "conv_op": "torch.nn.modules.conv.Conv3d", "ndc_ratio": 2}
    net = get_network_from_plans("nnunetv2_deconver.network.Deconver", arch_kwargs, ["conv_op"],
                                 input_channels=1, output_channels=4, allow_init=True, deep_supervision=True)
    assert isinstance(net, Deconver)
    assert net.encoder.stages[0][1].mixer.ndc.filters.shape[1] == 2 * 8 // 8  # R*C/G with G = C
    assert len(net(torch.rand(1, 1, 8, 32, 32))) == 4


def test_initialize_keeps_kaiming_uniform_filters():
    net = Deconver(input_channels=1, num_classes=2, **ISOTROPIC)
    with torch.no_grad():
        for p in net.parameters():
            p.fill_(7.0)
    net.apply(Deconver.initialize)
    for stage in net.encoder.stages:
        filters = stage[1].mixer.ndc.filters
        fan_in = filters.shape[1] * np.prod(filters.shape[2:])
        assert 0 < filters.abs().max() <= 1 / np.sqrt(fan_in)


def test_feature_map_size_scales_with_the_patch():
    net = Deconver(input_channels=1, num_classes=2, **ISOTROPIC)
    small = net.compute_conv_feature_map_size((16, 16, 16))
    assert small > 0
    assert net.compute_conv_feature_map_size((32, 32, 32)) == 8 * small  # every map grows by 2^3
    wider = Deconver(input_channels=1, num_classes=2, **{**ISOTROPIC, "features_per_stage": [16, 32, 64, 128]})
    assert wider.compute_conv_feature_map_size((16, 16, 16)) > small


def test_backward_reaches_every_parameter_with_deep_supervision():
    net = Deconver(input_channels=1, num_classes=2, deep_supervision=True, **TWO_D)
    sum(o.sum() for o in net(torch.rand(1, 1, 32, 16))).backward()
    assert all(p.grad is not None for p in net.parameters())  # nothing unused: DDP needs this


def _saved_bytes(fn) -> int:
    total = [0]

    def pack(tensor):
        total[0] += tensor.numel() * tensor.element_size()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        fn()
    return total[0]


def test_checkpointed_blocks_give_the_same_gradients():
    torch.manual_seed(0)
    plain = Deconver(input_channels=1, num_classes=2, deep_supervision=True, **ISOTROPIC)
    checkpointed = Deconver(input_channels=1, num_classes=2, deep_supervision=True, checkpoint_blocks=True,
                            **ISOTROPIC)
    checkpointed.load_state_dict(plain.state_dict())  # same keys: checkpointing changes no parameter
    for block in plain.modules():  # plain autograd, the very operations checkpointing reruns
        if isinstance(block, DeconverBlock):
            block.memory = "plain"
    x = torch.rand(2, 1, 16, 16, 16)
    for net in (plain, checkpointed):
        sum((o * torch.linspace(0, 1, o.shape[-1])).sum() for o in net(x)).backward()
    for (name, a), b in zip(plain.named_parameters(), checkpointed.parameters()):
        # the checkpointed NDC runs as plain operations in another summation order: fp32 rounding apart
        torch.testing.assert_close(b.grad, a.grad, rtol=1e-5, atol=1e-5 * a.grad.abs().max().item(), msg=name)


def test_checkpointed_blocks_keep_only_their_inputs():
    x = torch.rand(2, 1, 16, 16, 16)
    checkpointed = Deconver(input_channels=1, num_classes=2, deep_supervision=True, checkpoint_blocks=True,
                            **ISOTROPIC)
    without_blocks = Deconver(input_channels=1, num_classes=2, deep_supervision=True, **ISOTROPIC)
    for module in list(without_blocks.modules()):
        for name, child in list(module.named_children()):
            if isinstance(child, DeconverBlock):
                setattr(module, name, torch.nn.Identity())
    # one (B, C, *S) input per block: encoder stage s and decoder stage s both at width C_s, 16^3 / 8^s voxels
    widths = ISOTROPIC["features_per_stage"]
    block_inputs = sum(2 * c * 16 ** 3 // 8 ** s for s, c in enumerate(widths)) - widths[-1] * 16 ** 3 // 8 ** 3
    assert _saved_bytes(lambda: checkpointed(x)) == _saved_bytes(lambda: without_blocks(x)) + 4 * 2 * block_inputs
    # with plain autograd every block keeps its activations: many times more
    plain = Deconver(input_channels=1, num_classes=2, deep_supervision=True, **ISOTROPIC)
    for block in plain.modules():
        if isinstance(block, DeconverBlock):
            block.memory = "plain"
    assert _saved_bytes(lambda: plain(x)) > 5 * _saved_bytes(lambda: checkpointed(x))
