"""Inference-side checks of the recipe study's trained models, without retraining (lead 5 of the study).

For each given run of ``benchmarks/recipe_study.py`` (its results folder under ``--study``), the fold's
validation slices are predicted again by nnU-Net's ``nnUNetPredictor`` from the run's ``checkpoint_final.pth``:

- with nnU-Net's defaults (tile step 0.5, Gaussian weighting, test-time mirroring): the final validation again;
- without mirroring;
- with tile step 0.25;

each scored like the study (``recipe_study.score_folder``: Dice and HD95 per class, false-positive area
farther than 2 mm from its structure).

    python benchmarks/recipe_inference.py --study study --runs stock_fold0_seed0 adamw1e-3_fold0_seed0

Writes ``--study/inference_checks.json`` and prints markdown tables.
"""
import argparse
import json
import os
import sys
import tempfile
from pathlib import Path
from typing import List

import torch

from recipe_study import RECIPES, _fold_folder, ground_truth, score_folder

SETTINGS = {"step 0.5, mirroring (nnU-Net's default)": dict(tile_step_size=0.5, use_mirroring=True),
            "step 0.5, no mirroring": dict(tile_step_size=0.5, use_mirroring=False),
            "step 0.25, mirroring": dict(tile_step_size=0.25, use_mirroring=True)}


def _predictor(model_folder: Path, fold: int, **settings):
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor
    predictor = nnUNetPredictor(use_gaussian=True, perform_everything_on_device=False, device=torch.device("cpu"),
                                allow_tqdm=False, **settings)
    predictor.initialize_from_trained_model_folder(str(model_folder), (fold,), "checkpoint_final.pth")
    return predictor


def _validation_cases(fold_folder: Path, fold: int) -> List[str]:
    splits = Path(os.environ["nnUNet_preprocessed"]) / fold_folder.parent.parent.name / "splits_final.json"
    return json.loads(splits.read_text())[fold]["val"]


def settings_scores(fold_folder: Path, fold: int) -> dict:
    """The validation slices predicted under each of ``SETTINGS``, scored."""
    raw = Path(os.environ["nnUNet_raw"]) / fold_folder.parent.parent.name / "imagesTr"
    cases = _validation_cases(fold_folder, fold)
    dataset_json = fold_folder.parent / "dataset.json"
    ending = json.loads(dataset_json.read_text())["file_ending"]
    scores = {}
    for name, settings in SETTINGS.items():
        with tempfile.TemporaryDirectory() as out:
            _predictor(fold_folder.parent, fold, **settings).predict_from_files(
                [[str(raw / f"{case}_0000{ending}")] for case in cases], out, num_processes_preprocessing=1,
                num_processes_segmentation_export=1)
            scores[name] = score_folder(Path(out), ground_truth(fold_folder), dataset_json)
    return scores


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--study", type=Path, required=True)
    parser.add_argument("--runs", nargs="+", required=True, help="result folder names: RECIPE_foldF_seedS")
    parser.add_argument("-c", "--configuration", default="2d")
    args = parser.parse_args(argv)
    from nnunetv2_deconver.nnunet.trainer_discovery import trainers_folder
    os.environ.setdefault("nnUNet_extTrainer", trainers_folder())  # nnU-Net finds the study trainers there
    torch.set_num_threads(os.cpu_count())
    checks = {}
    for name in args.runs:
        recipe, fold = name.split("_fold")[0], int(name.split("_fold")[1].split("_")[0])
        fold_folder = _fold_folder(args.study / name, RECIPES[recipe][0], args.configuration, fold)
        checks[name] = settings_scores(fold_folder, fold)
        print(name, json.dumps({k: round(v["mean_fg_dice"], 4) for k, v in checks[name].items()}), flush=True)
    (args.study / "inference_checks.json").write_text(json.dumps(checks, indent=2))
    for name, check in checks.items():
        print(f"\n{name}")
        print("| setting | mean fg Dice | mean fg HD95 (mm) | far false positives (mm^2) |\n|---|---|---|---|")
        for setting, s in check.items():
            print(f"| {setting} | {s['mean_fg_dice']:.3f} | {s['mean_fg_hd95']:.2f} | "
                  f"{s['far_false_positive_mm2']:.0f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
