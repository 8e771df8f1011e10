"""The comparison report's PNG plots (matplotlib, no display needed)."""
import contextlib
import io
from typing import Dict, List, Optional, Sequence

import matplotlib

matplotlib.use("Agg")  # report files only; never open a window
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

__all__ = ["dice_per_case", "dice_vs_flops", "worst_case"]

_COLOURS = plt.rcParams["axes.prop_cycle"].by_key()["color"]


def dice_per_case(path: str, runs, cases: Sequence[str], keys, names, per_run_case) -> str:
    """Box plot of Dice per case for every run, one panel per class, the cases drawn as points."""
    fig, axes = plt.subplots(1, len(keys), figsize=(2.2 + 1.6 * len(runs) * len(keys), 4), squeeze=False)
    rng = np.random.default_rng(0)  # fixed jitter: the same data gives the same picture
    for ax, key in zip(axes[0], keys):
        values = [[per_run_case[r.name][c][key][0] for c in cases] for r in runs]
        ax.boxplot(values, widths=0.5, showfliers=False)
        for i, v in enumerate(values, 1):
            ax.scatter(i + rng.uniform(-0.12, 0.12, len(v)), v, s=14, alpha=0.75,
                       color=_COLOURS[(i - 1) % len(_COLOURS)], zorder=3)
        ax.set_xticks(range(1, len(runs) + 1), [r.name for r in runs], rotation=20, ha="right", fontsize=8)
        ax.set_title(names[key])
        ax.set_ylim(-0.02, 1.02)
        ax.grid(axis="y", alpha=0.3)
    axes[0][0].set_ylabel("Dice per case")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def dice_vs_flops(path: str, runs, foreground_dice: Dict[str, float]) -> str:
    """Mean foreground Dice against FLOPs per voxel (cf. the paper's Fig. 3), marker area ~ parameters."""
    fig, ax = plt.subplots(figsize=(5.5, 4))
    params = [r.cost.parameters or 0 for r in runs]
    biggest = max(params) or 1
    for i, run in enumerate(runs):
        flops = run.cost.flops_per_voxel
        if flops is None:
            continue
        size = 40 + 400 * (params[i] / biggest)
        ax.scatter([flops / 1e3], [foreground_dice[run.name]], s=size, color=_COLOURS[i % len(_COLOURS)],
                   alpha=0.8, label=f"{run.name} ({params[i] / 1e6:.2f}M params)")
        ax.annotate(run.name, (flops / 1e3, foreground_dice[run.name]), textcoords="offset points",
                    xytext=(6, 6), fontsize=8)
    ax.set_xlabel("FLOPs / voxel (K), all convolutions")
    ax.set_ylabel("mean foreground Dice")
    ax.set_xscale("log")
    ax.grid(alpha=0.3, which="both")
    ax.margins(0.3)  # room for the labels next to the markers
    ax.legend(fontsize=7, loc="best", markerscale=0.5)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def worst_case(path: str, case: str, reader, reference_file: str, image_file: Optional[str],
               prediction_files: Dict[str, str], keys, names, metrics) -> str:
    """The slice of the worst case where the runs disagree most with the reference: the image (if
    found), the reference, and each run's prediction with its errors."""
    with contextlib.redirect_stdout(io.StringIO()):
        reference = reader.read_seg(reference_file)[0][0]
        predictions = {name: reader.read_seg(f)[0][0] for name, f in prediction_files.items()}
        image = reader.read_images([image_file])[0][0] if image_file else None
    errors = sum((p != reference) for p in predictions.values())
    slice_index = int(np.argmax(errors.reshape(errors.shape[0], -1).sum(axis=1))) if reference.ndim == 3 else None

    def cut(volume):
        return volume[slice_index] if slice_index is not None else volume

    panels: List = [("reference", cut(reference), None)] + \
        [(name, cut(p), metrics[name]) for name, p in predictions.items()]
    fig, axes = plt.subplots(1, len(panels), figsize=(3.2 * len(panels), 3.6), squeeze=False)
    label_max = max(int(reference.max()), *(int(p.max()) for p in predictions.values()), 1)
    cmap = plt.get_cmap("tab10", max(label_max + 1, 2))
    background = cut(image) if image is not None else np.zeros_like(cut(reference), dtype=float)
    for ax, (title, labels, scores) in zip(axes[0], panels):
        ax.imshow(background, cmap="gray", interpolation="nearest")
        ax.imshow(np.ma.masked_equal(labels, 0), cmap=cmap, vmin=0, vmax=max(label_max, 1), alpha=0.55,
                  interpolation="nearest")
        if scores is not None:
            wrong = (labels != cut(reference))
            ax.contour(wrong, levels=[0.5], colors="red", linewidths=0.7)
            text = ", ".join(f"{names[k]} {scores[k][0]:.2f}" for k in keys)
            title = f"{title}\nDice {text}"
        ax.set_title(title, fontsize=8)
        ax.axis("off")
    where = f"slice {slice_index}" if slice_index is not None else "2D"
    fig.suptitle(f"worst case {case}, {where} (red: disagreement with the reference)", fontsize=9)
    fig.tight_layout(rect=(0, 0, 1, 0.92))
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
