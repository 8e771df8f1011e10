"""Where the time goes: torch.profiler per-op self CPU time of one training step and one inference forward.

Builds the U-Net and Deconver from a plan made by ``benchmarks/plan_parity.py`` (pass its folder, or let
this script make the plan in a temporary folder) and prints, per network and phase, the total and the
top operators by self CPU time.

    python benchmarks/profile_plan.py --plan 3d_aniso [--folder /tmp/plans] [--top 12]
"""
import argparse
import os
import sys
import tempfile
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

sys.path.insert(0, str(Path(__file__).resolve().parent))
import plan_parity as parity  # noqa: E402


def _table(prof, top: int) -> str:
    events = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)
    total = sum(e.self_cpu_time_total for e in events)
    lines = [f"  total self CPU {total / 1e6:.2f} s"]
    for e in events[:top]:
        lines.append(f"  {e.key:<42} {e.self_cpu_time_total / 1e6:7.2f} s {100 * e.self_cpu_time_total / total:5.1f}% "
                     f"x{e.count}")
    return "\n".join(lines)


def profile_plan(folder: Path, name: str, top: int) -> None:
    manager, configuration = parity.load_plan(folder, name)
    patch, batch = configuration.patch_size, configuration.batch_size
    for network in parity.NETWORKS:
        torch.manual_seed(0)
        step = parity.Step(parity.build(network, manager, configuration, True), patch, batch)
        step()  # warm-up
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            step()
        print(f"{name} {network} training step (batch {batch}):\n{_table(prof, top)}")
        model = parity.build(network, manager, configuration, False).eval()
        data = torch.randn(1, 1, *patch)
        with torch.inference_mode():
            model(data)
            with profile(activities=[ProfilerActivity.CPU]) as prof:
                model(data)
        print(f"{name} {network} inference forward (one patch):\n{_table(prof, top)}")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--plan", default="3d_aniso", choices=list(parity.DATASETS))
    parser.add_argument("--folder", help="a folder with raw/preprocessed/results made by plan_parity")
    parser.add_argument("--top", type=int, default=12)
    args = parser.parse_args(argv)
    from nnunetv2_deconver.nnunet.allocator import keep_freed_memory_for_reuse
    keep_freed_memory_for_reuse(torch.device("cpu"))
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(args.folder or tmp)
        for sub, variable in (("raw", "nnUNet_raw"), ("preprocessed", "nnUNet_preprocessed"),
                              ("results", "nnUNet_results")):
            (folder / sub).mkdir(exist_ok=True)
            os.environ[variable] = str(folder / sub)
        if not (folder / "preprocessed" / f"Dataset{parity.DATASETS[args.plan][0]}_Parity").exists():
            parity.make_plans(folder, [args.plan])
        profile_plan(folder, args.plan, args.top)
    return 0


if __name__ == "__main__":
    sys.exit(main())
