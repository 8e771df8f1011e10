"""The report's text: ``per_case.csv``, the terminal table and ``summary.md``."""
import csv
from typing import List, Optional

import numpy as np

from nnunetv2_deconver.tools.compare.records import Comparison

__all__ = ["write_csv", "render_table", "render_markdown"]


def write_csv(path: str, rows: List[dict]) -> None:
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        for row in rows:
            writer.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in row.items()})


def _fmt(value, digits=3, scale=1.0, suffix=""):
    if value is None or (isinstance(value, float) and not np.isfinite(value)):
        return "n/a"
    return f"{value * scale:.{digits}f}{suffix}"


def _human(number: Optional[float]) -> str:
    if number is None:
        return "n/a"
    for unit, size in (("G", 1e9), ("M", 1e6), ("K", 1e3)):
        if abs(number) >= size:
            return f"{number / size:.2f}{unit}"
    return f"{number:.0f}"


def _p(value) -> str:
    if value is None:
        return "(baseline)"
    if not np.isfinite(value):
        return "n/a"
    return f"{value:.3g}"


def render_table(comparison: Comparison) -> str:
    """The short terminal table: per class, mean Dice and HD95 per run with p-values, then costs."""
    runs = comparison.runs
    width = max(len(r.name) for r in runs)
    header = f"{'class':12} {'run':{width}} | {'Dice mean':>9} {'median':>7} {'p':>10} | " \
             f"{'HD95 mm':>8} {'median':>7} {'p':>10}"
    lines = [f"{len(comparison.cases)} cases; p: paired Wilcoxon signed-rank vs {runs[0].name}", header,
             "-" * len(header)]
    for key in comparison.keys:
        name = comparison.names[key]
        for run in runs:
            s = comparison.stats[(name, run.name)]
            lines.append(f"{name[:12]:12} {run.name:{width}} | {s.dice_mean:9.4f} {s.dice_median:7.4f} "
                         f"{_p(s.p_dice):>10} | {s.hd95_mean:8.2f} {s.hd95_median:7.2f} {_p(s.p_hd95):>10}")
    lines.append("")
    cost_header = f"{'run':{width}} | {'params':>8} {'FLOPs/vox':>10} {'s/epoch':>8} {'peak MiB':>8} " \
                  f"{'fwd s/patch':>11}"
    lines += [cost_header, "-" * len(cost_header)]
    for run in runs:
        c = run.cost
        lines.append(f"{run.name:{width}} | {_human(c.parameters):>8} {_human(c.flops_per_voxel):>10} "
                     f"{_fmt(c.training.epoch_seconds, 2):>8} {_fmt(c.training.peak_gpu_mib, 0):>8} "
                     f"{_fmt(c.forward_seconds, 3):>11}")
    return "\n".join(lines)


def _header(comparison: Comparison) -> List[str]:
    runs = comparison.runs
    source = f"cross-validation predictions, folds {', '.join(comparison.folds)}" if comparison.folds \
        else "predictions folders"
    lines = [f"# {' vs '.join(r.name for r in runs)}", "",
             f"- dataset: {comparison.dataset or 'n/a'}, configuration `{comparison.configuration}`",
             f"- {source}; {len(comparison.cases)} cases scored against `{comparison.reference_folder}`",
             f"- baseline of the paired tests: {runs[0].name}", ""]
    if comparison.problems:
        lines += ["## Problems (partial report: only the cases without problems are scored)", ""]
        lines += [f"- {p}" for p in comparison.problems] + [""]
    return lines


def _segmentation(comparison: Comparison) -> List[str]:
    lines = ["## Segmentation", "",
             "| class | run | Dice mean | Dice median | p (Dice) | HD95 mean (mm) | HD95 median (mm) | p (HD95) |",
             "|---|---|---:|---:|---:|---:|---:|---:|"]
    for key in comparison.keys:
        name = comparison.names[key]
        for run in comparison.runs:
            s = comparison.stats[(name, run.name)]
            lines.append(f"| {name} | {run.name} | {s.dice_mean:.4f} | {s.dice_median:.4f} | {_p(s.p_dice)} "
                         f"| {s.hd95_mean:.2f} | {s.hd95_median:.2f} | {_p(s.p_hd95)} |")
    return lines + ["", "Mean Dice over all foreground classes: " +
                    ", ".join(f"{r.name} {comparison.foreground_dice[r.name]:.4f}" for r in comparison.runs), ""]


def _costs(comparison: Comparison) -> List[str]:
    lines = ["## Cost", "",
             "| run | parameters | FLOPs/voxel (all convolutions) | FLOPs/voxel (paper-style) | patch | epochs "
             "| s/epoch (training log) | peak GPU memory, MiB (training log) | s per forward pass over a patch |",
             "|---|---:|---:|---:|---|---:|---:|---:|---:|"]
    for run in comparison.runs:
        c = run.cost
        patch = "x".join(map(str, c.patch_size)) if c.patch_size else "n/a"
        lines.append(f"| {run.name} | {_human(c.parameters)} | {_human(c.flops_per_voxel)} | "
                     f"{_human(c.paper_style_flops_per_voxel)} | {patch} | {c.training.epochs or 'n/a'} | "
                     f"{_fmt(c.training.epoch_seconds, 2)} | {_fmt(c.training.peak_gpu_mib, 0)} | "
                     f"{_fmt(c.forward_seconds, 3)} |")
    notes = [f"- {r.name}: {n}" for r in comparison.runs for n in r.cost.notes]
    return lines + [""] + notes + ([""] if notes else [])


def render_markdown(comparison: Comparison) -> str:
    """``summary.md``: the inputs and problems, the segmentation scores, the costs, the plots, the definitions."""
    lines = _header(comparison) + _segmentation(comparison) + _costs(comparison)
    timing = comparison.timing_device
    lines += ["## Plots", "", "![Dice per case](dice_per_case.png)", "", "![Dice vs FLOPs](dice_vs_flops.png)", "",
              f"![Worst case](worst_case.png) Worst case: `{comparison.worst_case}` (lowest Dice averaged over runs "
              f"and classes).", "",
              "## Definitions", "",
              "- Dice per case and class (paper eq. 8), 1 when reference and prediction are both empty.",
              "- HD95 in mm with the image spacing: the larger of the two directed 95th percentiles of the "
              "distances between the surfaces. Both empty: 0. One empty: the image diagonal in mm (the worst "
              "possible value, so a missed or spurious structure counts against the run instead of vanishing "
              "from the mean).",
              "- p: two-sided paired Wilcoxon signed-rank test over cases against the baseline (1 when all "
              "pairs are equal).",
              "- FLOPs: 2 per multiply-accumulate of every convolution, forward, per input voxel, from "
              "`torch.utils.flop_counter`; paper-style leaves out the NDC update's convolutions, as the "
              "paper's profiler did.",
              "- s/epoch: mean of the `Epoch time` lines of nnU-Net's training logs over all folds.",
              "- Peak GPU memory: the largest `Peak GPU memory` line of the training logs (tensors' peak per "
              "epoch, logged by trainers with `PeakGPUMemoryLog`, e.g. `nnUNetTrainerWithMemoryLog`); n/a where "
              "the trainer did not log it or trained on a CPU.",
              "- Forward pass: batch 1 over the plan's patch, random weights, median of 3 after a warm-up, on " +
              (f"`{timing}`" if timing else "(not measured)") +
              "; sliding-window inference runs one per window (times 8 with test-time mirroring in 3D).", ""]
    return "\n".join(lines)
