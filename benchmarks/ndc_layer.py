"""One NDC layer: the naive composition against the project's default path.

For each stage geometry of the BraTS'23 preset (widths 32..512, R = 4, G = C, k = 3, batch 1, the
spatial size halving per stage) it reports the forward and forward+backward time (median over
interleaved runs, so that both paths see the same machine load), the activation bytes autograd saves
for backward, the peak memory of forward+backward, and the forward's distance from the bandwidth
roofline (the bytes a forward must move, read x and S0 and write the output, at the bandwidth a
``clone()`` of the output's size achieves on the same device).

    python benchmarks/ndc_layer.py            # CPU: 64^3 at the first stage; GPU: 128^3
    python benchmarks/ndc_layer.py --quick    # a small smoke run, under a minute
    python benchmarks/ndc_layer.py --dispatch # naive vs channels-last around the CPU dispatch threshold
"""
import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from _common import PeakMemory, machine_description, median, mib, timed  # noqa: E402
from nnunetv2_deconver.network.costs import saved_tensor_bytes  # noqa: E402
from nnunetv2_deconver.ops.ndc import nonnegative_deconvolution  # noqa: E402
from nnunetv2_deconver.ops.ndc_dispatch import select_implementation  # noqa: E402
from nnunetv2_deconver.network.presets import PAPER_PRESETS, paper_widths  # noqa: E402


def brats_geometries(first_size: int):
    preset = PAPER_PRESETS["brats23"]
    widths = paper_widths(preset.base_channels, preset.n_stages)
    return [(c, max(first_size // 2 ** level, 2)) for level, c in enumerate(widths)]


def operands(channels: int, size: int, ratio: int, device: torch.device, dim: int = 3):
    generator = torch.Generator().manual_seed(0)
    spatial = (size,) * dim
    x = torch.rand(1, channels, *spatial, generator=generator).to(device).requires_grad_()
    source = torch.rand(1, ratio * channels, *spatial, generator=generator).to(device).requires_grad_()
    filters = torch.rand(channels, ratio, *(3,) * dim, generator=generator).to(device).requires_grad_()
    grad = torch.rand(1, ratio * channels, *spatial, generator=generator).to(device)
    return x, source, filters, grad


def measure(channels, size, ratio, device, implementations, repeats, naive_repeats, compile_fast):
    """Rows keyed by path. A channels-last path is timed twice: with the operands in the default layout
    (the layout changes are part of its cost) and with them already channels-last, as the Deconv mixer
    delivers them inside the network (rows ``... (channels-last operands)``)."""
    x, source, filters, grad = operands(channels, size, ratio, device)
    groups = channels
    cases = {name: (name, (x, source, filters), grad) for name in implementations}
    if "channels_last" in implementations:
        layout = torch.channels_last_3d
        moved = [t.detach().contiguous(memory_format=layout).requires_grad_() for t in (x, source)]
        cases["channels_last (channels-last operands)"] = ("channels_last", (*moved, filters),
                                                           grad.contiguous(memory_format=layout))
    calls = {label: (lambda name=name, tensors=tensors: nonnegative_deconvolution(*tensors, groups,
                                                                                   implementation=name))
             for label, (name, tensors, _) in cases.items()}
    if compile_fast:
        fast = implementations[-1]
        calls[f"{fast}+compile"] = torch.compile(
            lambda: nonnegative_deconvolution(x, source, filters, groups, implementation=fast))
        cases[f"{fast}+compile"] = (fast, (x, source, filters), grad)

    def forward_backward(label):
        tensors, gradient = cases[label][1], cases[label][2]
        for tensor in tensors:
            tensor.grad = None
        calls[label]().backward(gradient)

    for label in calls:  # warm-up (and compilation)
        forward_backward(label)
    times = {label: {"fwd": [], "fwd+bwd": []} for label in calls}
    for run in range(repeats):
        for label, call in calls.items():
            if label == "naive" and run >= naive_repeats:
                continue
            times[label]["fwd"].append(timed(call, device))
            times[label]["fwd+bwd"].append(timed(lambda: forward_backward(label), device))
    rows = {}
    for label, call in calls.items():
        saved = saved_tensor_bytes(call, exclude=(filters,))
        with PeakMemory(device) as peak:
            forward_backward(label)
        rows[label] = dict(fwd=median(times[label]["fwd"]), fwd_bwd=median(times[label]["fwd+bwd"]),
                           runs=len(times[label]["fwd"]), saved=saved, peak=peak.bytes)
    out = torch.empty_like(source)
    copy_time = median([timed(lambda: out.copy_(source), device) for _ in range(max(repeats, 5))])
    bandwidth = 2 * source.numel() * source.element_size() / copy_time
    roofline = (x.numel() + 2 * source.numel()) * source.element_size() / bandwidth
    return rows, roofline, bandwidth


DISPATCH_GRID = {3: ([32, 128, 256, 320, 512], [4, 6, 8, 12]), 2: ([32, 128, 512], [16, 24, 32, 64])}


def dispatch_table(repeats: int) -> None:
    """Forward+backward time of naive over channels-last (> 1: channels-last faster) for small maps, where the
    default dispatch (``CHANNELS_LAST_MIN_VOXELS``) switches from one to the other on the CPU."""
    device = torch.device("cpu")
    print("| dims | C | size | naive fwd+bwd ms | channels_last fwd+bwd ms | naive / channels_last | dispatch |")
    print("|---|---|---|---|---|---|---|")
    for dim, (channel_counts, sizes) in DISPATCH_GRID.items():
        for channels in channel_counts:
            for size in sizes:
                x, source, filters, grad = operands(channels, size, 4, device, dim)
                times = {"naive": [], "channels_last": []}

                def forward_backward(name):
                    for tensor in (x, source, filters):
                        tensor.grad = None
                    nonnegative_deconvolution(x, source, filters, channels, implementation=name).backward(grad)

                for name in times:
                    forward_backward(name)
                for _ in range(repeats):
                    for name in times:
                        times[name].append(timed(lambda: forward_backward(name), device))
                naive, fast = median(times["naive"]), median(times["channels_last"])
                chosen = select_implementation(x)
                print(f"| {dim}D | {channels} | {size}^{dim} | {naive * 1e3:.2f} | {fast * 1e3:.2f} "
                      f"| {naive / fast:.2f} | {chosen} |", flush=True)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="16^3 first stage, 5 runs: a smoke test")
    parser.add_argument("--size", type=int, help="spatial size of the first stage (default 64 on CPU, 128 on GPU)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--naive-repeats", type=int, help="runs of the naive path (default: --repeats)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--all-paths", action="store_true",
                        help="also time every non-default path (on a GPU including the fused 'triton' kernels)")
    parser.add_argument("--stages", type=int, default=5, help="measure only the first N BraTS stages")
    parser.add_argument("--dispatch", action="store_true",
                        help="CPU: naive vs channels-last at small maps, around the dispatch threshold")
    args = parser.parse_args(argv)
    if args.dispatch:
        print(f"# NDC layer, R = 4, G = C, k = 3, batch 1, fp32, cpu; {machine_description(torch.device('cpu'))}")
        print(f"# {args.repeats} interleaved runs per path, medians")
        dispatch_table(args.repeats)
        return 0
    device = torch.device(args.device)
    size = 16 if args.quick else args.size or (128 if device.type == "cuda" else 64)
    naive_repeats = min(args.naive_repeats or args.repeats, args.repeats)

    print(f"# NDC layer, R = 4, G = C, k = 3, batch 1, fp32, {device.type}")
    print(f"# {machine_description(device)}")
    print(f"# runs per path: {args.repeats} (naive: {naive_repeats}), medians; interleaved")
    print("# path: 'naive' and the path the default dispatch takes for that geometry")
    print("| C | size | path | fwd s | fwd+bwd s | speed-up fwd+bwd | saved for bwd MiB | saved vs naive "
          "| peak MiB | fwd / roofline |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for channels, stage_size in brats_geometries(size)[:args.stages]:
        default = select_implementation(torch.empty(1, channels, stage_size, stage_size, stage_size, device="meta"),
                                        device_type=device.type)
        implementations = ["naive"]
        if args.all_paths:
            others = ("recompute", "channels_last") + (("triton",) if device.type == "cuda" else ())
            implementations += [name for name in others if name != default]
        if default != "naive":
            implementations.append(default)
        rows, roofline, bandwidth = measure(channels, stage_size, 4, device, implementations, args.repeats,
                                            naive_repeats, compile_fast=device.type == "cuda")
        naive = rows["naive"]
        for name, row in rows.items():
            print(f"| {channels} | {stage_size}^3 | {name} | {row['fwd']:.4f} | {row['fwd_bwd']:.4f} "
                  f"| {naive['fwd_bwd'] / row['fwd_bwd']:.1f}x | {mib(row['saved'])} "
                  f"| {row['saved'] / naive['saved']:.2f} | {mib(row['peak'])} | {row['fwd'] / roofline:.1f}x |",
                  flush=True)
        print(f"<!-- {channels} @ {stage_size}^3: clone bandwidth {bandwidth / 1e9:.1f} GB/s, "
              f"forward roofline {roofline * 1e3:.2f} ms -->", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
