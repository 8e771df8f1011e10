"""What DTC costs on top of the base decoder: added parameters, forward FLOPs and training-step time.

For a small 3D nnU-Net-like plan (anisotropic first stride), each network is built twice, with plain
transposed convs and with every one wrapped in DTC (``Deconver(upsample="dtc")``, and
``PlainConvUNet`` wrapped the way ``nnUNetTrainerUNetDTC`` does it):

* parameters: counted;
* FLOPs: ``torch.utils.flop_counter`` on the meta device (2 per multiply-accumulate of every conv);
  it does not count ``grid_sample``, so its interpolation is added analytically:
  ``2 * 2**d * C_out * V_out`` per DTC layer (2**d taps per output value);
* step time: forward + backward + AdamW step at batch 2 with deep supervision (sum of the outputs'
  means as the loss), medians over interleaved repetitions so that load from other processes hits
  base and DTC alike.

    python benchmarks/dtc_overhead.py [--repeats 7] [--device cpu]
"""
import argparse
import copy
import math
import os
import platform
import statistics
import sys
import time

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from dynamic_network_architectures.architectures.unet import PlainConvUNet
from nnunetv2_deconver.ops.dtc import DeformableTransposedConv
from nnunetv2_deconver.network import Deconver

FEATURES = [16, 32, 64, 128]
STRIDES = [[1, 1, 1], [1, 2, 2], [2, 2, 2], [2, 2, 2]]
KERNELS = [[1, 3, 3], [3, 3, 3], [3, 3, 3], [3, 3, 3]]
PATCH = (16, 64, 64)
CLASSES = 3


def plain_unet(dtc: bool) -> nn.Module:
    net = PlainConvUNet(1, 4, FEATURES, nn.Conv3d, KERNELS, STRIDES, [2, 2, 2, 2], CLASSES, [2, 2, 2],
                        conv_bias=True, norm_op=nn.InstanceNorm3d, norm_op_kwargs={"eps": 1e-5, "affine": True},
                        nonlin=nn.LeakyReLU, nonlin_kwargs={"inplace": True}, deep_supervision=True)
    if dtc:
        for i, conv in enumerate(net.decoder.transpconvs):
            net.decoder.transpconvs[i] = DeformableTransposedConv.wrap(conv)
    return net


def deconver(dtc: bool) -> nn.Module:
    return Deconver(1, 4, FEATURES, nn.Conv3d, KERNELS, STRIDES, CLASSES, deep_supervision=True,
                    upsample="dtc" if dtc else "transposed")


def flops(net: nn.Module) -> float:
    meta = copy.deepcopy(net).to("meta")
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        meta(torch.empty(1, 1, *PATCH, device="meta"))
    return float(counter.get_total_flops())


def grid_sample_flops(net: nn.Module) -> float:
    """Interpolation FLOPs of every DTC layer for one sample (the counter does not see grid_sample)."""
    total, size = 0.0, list(PATCH)
    sizes = []
    for stride in STRIDES:
        size = [s // t for s, t in zip(size, stride)]
        sizes.append(size)
    layers = [m for m in net.modules() if isinstance(m, DeformableTransposedConv)]
    # decoder layers run deepest first; layer d writes the size of encoder stage n - 2 - d
    for d, layer in enumerate(layers):
        out = sizes[len(sizes) - 2 - d]
        total += 2 * 2 ** layer.dim * layer.out_channels * math.prod(out)
    return total


def step_fn(net: nn.Module, device: torch.device):
    optimizer = torch.optim.AdamW(net.parameters(), lr=1e-4)
    x = torch.randn(2, 1, *PATCH, device=device)

    def step():
        optimizer.zero_grad(set_to_none=True)
        loss = sum(o.float().mean() for o in net(x))
        loss.backward()
        optimizer.step()
    return step


def timed(fn, device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - start


def layer_breakdown(device: torch.device, repeats: int) -> str:
    """Forward + backward of the largest DTC layer of the plan, by part (median seconds)."""
    channels_in, channels_out = FEATURES[1], FEATURES[0]
    size_in = [p // s for p, s in zip(PATCH, STRIDES[1])]
    torch.manual_seed(0)
    layer = DeformableTransposedConv(channels_in, channels_out, tuple(STRIDES[1])).to(device)
    with torch.no_grad():
        layer.coordinates.weight.normal_(std=0.1)  # trained-like, non-zero offsets
    x = torch.randn(2, channels_in, *size_in, device=device, requires_grad=True)
    features = layer.features(x).detach().requires_grad_()
    offsets, weights = (t.detach().requires_grad_() for t in layer.offsets_and_weights(x))
    from nnunetv2_deconver.ops.dtc import deformable_sample
    parts = {
        "base transposed conv": lambda: layer.base(x).sum().backward(),
        "feature 1x1 conv": lambda: layer.features(x).sum().backward(),
        "coordinate transposed conv + tanh/sigmoid":
            lambda: sum(t.sum() for t in layer.offsets_and_weights(x)).backward(),
        "grid construction + grid_sample": lambda: deformable_sample(features, offsets, weights).sum().backward(),
        "whole DTC layer": lambda: layer(x).sum().backward(),
    }
    times = {k: [] for k in parts}
    for i in range(repeats + 1):
        for key, fn in parts.items():
            t = timed(fn, device)
            if i:
                times[key].append(t)
    lines = [f"largest DTC layer: {channels_in} -> {channels_out} channels, {tuple(size_in)} -> "
             f"{tuple(s * t for s, t in zip(size_in, STRIDES[1]))}, batch 2, forward + backward",
             "| part | median (s) |", "|---|---|"]
    lines += [f"| {k} | {statistics.median(v):.4f} |" for k, v in times.items()]
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    print(f"# torch {torch.__version__}, {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
          f"threads {torch.get_num_threads()}, device {device}; plan: features {FEATURES}, strides {STRIDES}, "
          f"patch {PATCH}, batch 2", flush=True)
    header = "| network | params base | + DTC params | GFLOPs base | + DTC GFLOPs (conv + grid_sample) | " \
             "step base (s) | step DTC (s) | overhead |"
    rows = [header, "|" + "---|" * 8]
    for name, build in (("PlainConvUNet", plain_unet), ("Deconver", deconver)):
        torch.manual_seed(0)
        base, dtc = build(False).to(device), build(True).to(device)
        p_base, p_dtc = (sum(p.numel() for p in n.parameters()) for n in (base, dtc))
        f_base, f_dtc_conv = flops(base), flops(dtc)
        f_grid = grid_sample_flops(dtc)
        steps = {"base": step_fn(base, device), "dtc": step_fn(dtc, device)}
        times = {"base": [], "dtc": []}
        for i in range(args.warmup + args.repeats):
            for key in ("base", "dtc") if i % 2 == 0 else ("dtc", "base"):  # interleaved, order alternating
                t = timed(steps[key], device)
                if i >= args.warmup:
                    times[key].append(t)
            print(f"  {name} repetition {i + 1}/{args.warmup + args.repeats}: base {times['base'][-1:]}, "
                  f"dtc {times['dtc'][-1:]}", file=sys.stderr, flush=True)
        t_base, t_dtc = statistics.median(times["base"]), statistics.median(times["dtc"])
        rows.append(f"| {name} | {p_base / 1e6:.3f}M | +{(p_dtc - p_base) / 1e3:.1f}K "
                    f"(+{100 * (p_dtc / p_base - 1):.2f}%) | {f_base / 1e9:.2f} | "
                    f"+{(f_dtc_conv - f_base) / 1e9:.3f} + {f_grid / 1e9:.3f} "
                    f"(+{100 * ((f_dtc_conv + f_grid) / f_base - 1):.2f}%) | {t_base:.3f} | {t_dtc:.3f} | "
                    f"{100 * (t_dtc / t_base - 1):+.1f}% |")
        print(rows[-1], flush=True)
    print("\n".join(rows))
    print()
    print(layer_breakdown(device, args.repeats))
    return 0


if __name__ == "__main__":
    sys.exit(main())
