"""``nnunetv2_deconver profile``: parameters and FLOPs per voxel of the paper's networks, against the paper."""
import argparse
import sys

import torch

from nnunetv2_deconver.network.costs import measure_cost
from nnunetv2_deconver.network.presets import PAPER_FIGURES, PAPER_PRESETS, paper_network

DESCRIPTION = "parameters and FLOPs/voxel of the paper's networks vs the paper"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--preset", choices=sorted(PAPER_PRESETS), help="only this preset")


# a patch every preset's strides divide, small enough that FLOPs/voxel do not depend on it
_PROFILE_PATCH = {3: (64, 64, 64), 2: (256, 256)}


def run(args: argparse.Namespace) -> int:
    rows = [key for key in PAPER_FIGURES if args.preset in (None, key[0])]
    header = f"{'preset':8} {'k':>2} {'R':>2} {'G':>3} | {'params':>8} {'paper':>7} {'diff':>7} | " \
             f"{'FLOPs/vox full':>14} | {'paper-style':>11} {'paper':>7} {'diff':>7}"
    lines = [header, "-" * len(header)]
    for i, (name, kernel, ratio, groups) in enumerate(rows, 1):
        print(f"[{i}/{len(rows)}] counting {name} k={kernel} R={ratio} G={groups or 'C'} ...", file=sys.stderr,
              flush=True)
        preset = PAPER_PRESETS[name]
        with torch.device("meta"):
            network = paper_network(name, kernel, ratio, groups)
        cost = measure_cost(network, preset.input_channels, _PROFILE_PATCH[preset.dim])
        paper_params, paper_flops = PAPER_FIGURES[(name, kernel, ratio, groups)]
        params_m, full_k, paper_style_k = cost.parameters / 1e6, cost.flops_per_voxel / 1e3, \
            cost.paper_style_flops_per_voxel / 1e3
        lines.append(f"{name:8} {kernel:>2} {ratio:>2} {groups or 'C':>3} | {params_m:7.3f}M {paper_params:6.2f}M "
                     f"{100 * (params_m / paper_params - 1):+6.2f}% | {full_k:13.1f}K | "
                     f"{paper_style_k:10.1f}K {paper_flops:6.1f}K {100 * (paper_style_k / paper_flops - 1):+6.2f}%")
    print("\n".join(lines))
    print("\nFLOPs: 2 per multiply-accumulate, per input voxel, forward, from torch.utils.flop_counter. "
          "'full' counts every convolution; 'paper-style' leaves out the NDC update's convolutions, "
          "which the paper's profiler did not see (see docs/costs.md).")
    return 0
