"""Stock nnU-Net against Deconver training recipes at an equal budget, through ``nnUNetv2_train``.

Each recipe is one ``nnUNetv2_train DATASET CONFIGURATION FOLD -tr TRAINER -device cpu`` process of the study
trainers (``trainers/variants/benchmarking/nnUNetTrainerDeconver_study.py``), whose budget and recipe come from
``NNUNETV2_DECONVER_STUDY_*`` variables. nnU-Net's final validation predicts the fold's validation cases by
sliding window with test-time mirroring, as users' runs do, and ``score_folder`` scores it (Dice as nnU-Net's
``summary.json`` gives it, HD95, false positives away from the structures). Every run gets a results folder of
its own under ``--out`` (``nnUNet_results`` is set per run), so runs of one trainer with different recipes
never meet; a run whose ``record.json`` exists is not run again.

    python benchmarks/inia19_dataset.py && nnUNetv2_plan_and_preprocess -d 510 -c 2d
    python benchmarks/recipe_study.py -d 510 --out study --epochs 10 --iterations 50 --recipes stock paper sgd

Writes ``--out/results.json`` (per run: recipe, seed, wall time, mean foreground Dice and HD95, both per class,
the per-epoch pseudo Dice and losses) and ``--out/curves.png``, and prints a markdown table.
"""
import argparse
import glob
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Dict, List, Tuple

import numpy as np
import torch

BIN = Path(sys.executable).parent
STOCK, DECONVER = "nnUNetTrainer_study", "nnUNetTrainerDeconver_study"
# name -> (trainer, recipe variables without the NNUNETV2_DECONVER_STUDY_ prefix)
RECIPES: Dict[str, Tuple[str, Dict[str, str]]] = {
    "stock": (STOCK, {}),
    "paper": (DECONVER, {"LR": "1e-4"}),  # the paper's: AdamW 1e-4, weight decay 1e-5, 1% warm-up, cosine
    "sgd": (DECONVER, {"OPTIMIZER": "sgd", "LR": "1e-2"}),  # nnU-Net's SGD: lr 1e-2, Nesterov 0.99, poly
    "adamw3e-4": (DECONVER, {"LR": "3e-4"}),
    "adamw1e-3": (DECONVER, {"LR": "1e-3"}),  # the paper's at ten times its lr: nnUNetTrainerDeconver's default
    "adamw1e-3-warmup10": (DECONVER, {"LR": "1e-3", "WARMUP": "0.1"}),
    "paper-no-ds": (DECONVER, {"LR": "1e-4", "DEEP_SUPERVISION": "0"}),
    "adamw1e-3-no-ds": (DECONVER, {"LR": "1e-3", "DEEP_SUPERVISION": "0"}),
}


def _fold_folder(results: Path, trainer: str, configuration: str, fold: int) -> Path:
    matches = glob.glob(str(results / "Dataset*" / f"{trainer}__*__{configuration}" / f"fold_{fold}"))
    if len(matches) != 1:
        raise FileNotFoundError(f"expected one fold folder of {trainer} under {results}, found {matches}")
    return Path(matches[0])


def _record(fold_folder: Path, seconds: float) -> dict:
    log = torch.load(fold_folder / "checkpoint_final.pth", map_location="cpu", weights_only=False)["logging"]
    return {"seconds": seconds, **score(fold_folder),
            "pseudo_dice_per_epoch": _floats(log["mean_fg_dice"]), "train_loss_per_epoch": _floats(log["train_losses"]),
            "val_loss_per_epoch": _floats(log["val_losses"]),
            "epoch_seconds": [e - s for s, e in zip(log["epoch_start_timestamps"], log["epoch_end_timestamps"])]}


def score(fold_folder: Path) -> dict:
    """:func:`score_folder` of nnU-Net's final validation of ``fold_folder``."""
    return score_folder(fold_folder / "validation", ground_truth(fold_folder), fold_folder.parent / "dataset.json")


def ground_truth(fold_folder: Path) -> Path:
    """The ground truth nnU-Net's validation is scored against: ``gt_segmentations`` of the preprocessed dataset."""
    return Path(os.environ["nnUNet_preprocessed"]) / fold_folder.parent.parent.name / "gt_segmentations"


def score_folder(predictions: Path, truth: Path, dataset_json_file: Path, far_mm: float = 2.0) -> dict:
    """Scores of the label maps in ``predictions`` against those of the same names in ``truth``.

    - Dice per class: nnU-Net's (``compute_tp_fp_fn_tn``, the mean over the cases where the class is in the
      reference or the prediction), as its ``summary.json`` gives it.
    - HD95 per class (mm, ``nnunetv2_deconver.tools.metrics``), averaged over the same cases; a class that
      one of the two masks misses counts as the image's diagonal.
    - ``far_false_positive_mm2``: the area of foreground predicted more than ``far_mm`` from any reference
      pixel of its class, summed over the cases and classes (false positives away from the structures).
    - The means are over the classes some reference holds: a class none holds has no overlap to score
      (its false positives can only give 0), so it is left out of them and listed.
    """
    import SimpleITK as sitk
    from nnunetv2.evaluation.evaluate_predictions import compute_tp_fp_fn_tn
    from scipy import ndimage
    from nnunetv2_deconver.tools.metrics import case_metrics
    dataset_json = json.loads(dataset_json_file.read_text())
    labels = sorted(v for v in dataset_json["labels"].values() if v != 0)
    dice, distances, present, far = ({label: [] for label in labels}, {label: [] for label in labels}, set(), 0.0)
    for predicted in sorted(predictions.glob("*" + dataset_json["file_ending"])):
        image = sitk.ReadImage(str(truth / predicted.name))
        reference, prediction = sitk.GetArrayFromImage(image), sitk.GetArrayFromImage(sitk.ReadImage(str(predicted)))
        spacing = image.GetSpacing()[::-1]
        present |= set(np.unique(reference).tolist())
        for label, (_, distance) in case_metrics(reference, prediction, spacing, labels).items():
            if (reference == label).any() or (prediction == label).any():
                tp, fp, fn, _ = compute_tp_fp_fn_tn(reference == label, prediction == label)
                dice[label].append(2 * tp / (2 * tp + fp + fn))
                distances[label].append(distance)
            away = ndimage.distance_transform_edt(reference != label, sampling=spacing) > far_mm
            far += float((away & (prediction == label)).sum() * np.prod(spacing[1:]))
    scored = [label for label in labels if label in present]
    per_class = {str(label): float(np.mean(d)) if d else float("nan") for label, d in dice.items()}
    hd95 = {str(label): float(np.mean(d)) if d else 0.0 for label, d in distances.items()}
    return {"dice_per_class": per_class, "hd95_per_class": hd95,
            "classes_without_reference": [str(label) for label in labels if label not in present],
            "mean_fg_dice": float(np.mean([per_class[str(label)] for label in scored])),
            "mean_fg_hd95": float(np.mean([hd95[str(label)] for label in scored])), "far_false_positive_mm2": far}


def _floats(values) -> List[float]:
    return [float(v) for v in values]  # nnU-Net's logger holds numpy scalars


def run(dataset: str, configuration: str, fold: int, recipe: str, seed: int, budget: Dict[str, str],
        out: Path) -> dict:
    """One study run, or its stored record where its summary already exists."""
    trainer, variables = RECIPES[recipe]
    results = out / f"{recipe}_fold{fold}_seed{seed}"
    record_file = results / "record.json"
    if record_file.exists():
        record = json.loads(record_file.read_text())
        if "far_false_positive_mm2" not in record:  # a record of an earlier version of this script: score again
            fold_folder = _fold_folder(results, trainer, configuration, fold)
            record.update(score(fold_folder))
            record_file.write_text(json.dumps(record, indent=2))
        return record
    from nnunetv2_deconver.nnunet.trainer_discovery import trainers_folder
    env = dict(os.environ, nnUNet_results=str(results), nnUNet_extTrainer=trainers_folder(), nnUNet_compile="f",
               nnUNet_n_proc_DA=os.environ.get("nnUNet_n_proc_DA", "1"),
               **{f"NNUNETV2_DECONVER_STUDY_{k}": v for k, v in {**budget, **variables, "SEED": str(seed)}.items()})
    command = [str(BIN / "nnUNetv2_train"), dataset, configuration, str(fold), "-tr", trainer, "-device", "cpu"]
    start = time.perf_counter()
    with open(out / f"{recipe}_fold{fold}_seed{seed}.log", "w") as log:
        subprocess.run(command, env=env, check=True, stdout=log, stderr=subprocess.STDOUT)
    seconds = time.perf_counter() - start
    fold_folder = _fold_folder(results, trainer, configuration, fold)
    record = {"recipe": recipe, "trainer": trainer, "variables": variables, "fold": fold, "seed": seed,
              "budget": budget, **_record(fold_folder, seconds)}
    record_file.write_text(json.dumps(record, indent=2))
    return record


def table(records: List[dict]) -> str:
    classes = sorted({c for r in records for c in r["dice_per_class"]}, key=int)
    lines = ["| recipe | fold | seed | iterations | wall time | mean fg Dice | mean fg HD95 (mm) | "
             + " | ".join(f"class {c}" for c in classes) + " |",
             "|---|---|---|---|---|---|---|" + "---|" * len(classes)]
    for r in records:
        per_class = " | ".join(f"{r['dice_per_class'][c]:.3f}" for c in classes)
        iterations = int(r["budget"]["EPOCHS"]) * int(r["budget"]["ITERATIONS"])
        lines.append(f"| {r['recipe']} | {r['fold']} | {r['seed']} | {iterations} | {r['seconds'] / 60:.1f} min | "
                     f"{r['mean_fg_dice']:.3f} | {r['mean_fg_hd95']:.2f} | {per_class} |")
    return "\n".join(lines)


def plot(records: List[dict], path: Path) -> None:
    """Per-epoch pseudo Dice (nnU-Net's validation-patch Dice) and training loss of every run, one line each."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    figure, (dice, loss) = plt.subplots(1, 2, figsize=(10, 3.8))
    for r in records:
        label = f"{r['recipe']} (fold {r['fold']}, seed {r['seed']})"
        epochs = range(1, len(r["pseudo_dice_per_epoch"]) + 1)
        dice.plot(epochs, r["pseudo_dice_per_epoch"], label=label)
        loss.plot(epochs, r["train_loss_per_epoch"], label=label)
    dice.set(xlabel="epoch", ylabel="pseudo Dice (validation patches)")
    loss.set(xlabel="epoch", ylabel="training loss")
    dice.legend(fontsize=7)
    figure.tight_layout()
    figure.savefig(path, dpi=90)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-d", "--dataset", default="510")
    parser.add_argument("-c", "--configuration", default="2d")
    parser.add_argument("--folds", type=int, nargs="+", default=[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--recipes", nargs="+", default=["stock", "paper"], choices=list(RECIPES))
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--iterations", type=int, default=50, help="training iterations per epoch")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    budget = {"EPOCHS": str(args.epochs), "ITERATIONS": str(args.iterations)}
    records = []
    for fold in args.folds:
        for seed in args.seeds:
            for recipe in args.recipes:  # interleaved: each recipe of a fold and seed before the next
                records.append(run(args.dataset, args.configuration, fold, recipe, seed, budget, args.out))
                print(f"{recipe} fold {fold} seed {seed}: mean fg Dice {records[-1]['mean_fg_dice']:.3f} "
                      f"in {records[-1]['seconds'] / 60:.1f} min", flush=True)
    (args.out / "results.json").write_text(json.dumps(records, indent=2))
    plot(records, args.out / "curves.png")
    print(table(records))
    return 0


if __name__ == "__main__":
    sys.exit(main())
