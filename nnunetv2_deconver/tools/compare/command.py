"""``nnUNetv2_deconver_compare``: is one trainer better than another on this dataset, and what does it cost?

Reads nnU-Net's results (the cross-validation predictions in
``nnUNet_results/DatasetXXX/TRAINER__PLANS__CONFIG/fold_N/validation``, or one predictions folder per
trainer plus a labels folder), scores every case with :mod:`nnunetv2_deconver.tools.metrics`, and writes a
report folder: ``summary.md``, ``per_case.csv``, ``dice_per_case.png``, ``dice_vs_flops.png`` and
``worst_case.png``. The first trainer is the baseline of the paired Wilcoxon tests.

Bad input (missing folds, case ids that differ, differing label sets, empty or unreadable files,
mismatched geometry) is reported case by case and ends with exit status 1; ``--partial`` also writes
a report on the cases that are usable.
"""
import argparse
import os
import shutil
import sys
import warnings
from typing import List, Optional, Sequence

import numpy as np

from nnunetv2_deconver.tools.compare import plots as compare_plots
from nnunetv2_deconver.tools.compare.costs import measure_run_cost
from nnunetv2_deconver.tools.compare.label_files import LabelFileError, check_image, read_label_map
from nnunetv2_deconver.tools.compare.publish import foreign_entries, publish, remove_leftovers, staging_folder
from nnunetv2_deconver.tools.compare.report import render_markdown, render_table, write_csv
from nnunetv2_deconver.tools.compare.runs import (CompareError, Run, cases_in, check_cases, check_labels, find_image,
                                                  find_runs, fold_of_cases, log, reference_folder)
from nnunetv2_deconver.tools.compare.scoring import label_keys, reader_for, score_cases
from nnunetv2_deconver.tools.compare.statistics import class_statistics, foreground_dice

__all__ = ["CompareError", "Run", "compare", "main", "DESCRIPTION", "add_arguments", "run"]

DEFAULT_TRAINERS = ("nnUNetTrainer", "nnUNetTrainerDeconver")
DESCRIPTION = ("Compare nnU-Net trainers (default: stock nnUNetTrainer vs nnUNetTrainerDeconver) on one dataset: "
               "Dice, HD95, Wilcoxon p-values, parameters, FLOPs/voxel and times, as a report folder (summary.md, "
               "per_case.csv, PNG plots).")


PLOTS = ("dice_per_case.png", "dice_vs_flops.png", "worst_case.png")
REPORT_FILES = ("summary.md", "per_case.csv", *PLOTS)


def _output_parent(output: str) -> str:
    """The folder that holds the report folder, created if missing; a clear error where it cannot be."""
    output = os.path.abspath(output)
    if os.path.exists(output) and not os.path.isdir(output):
        raise CompareError([f"report folder {output} is a file; give another -o"])
    parent = os.path.dirname(output)
    try:
        os.makedirs(parent, exist_ok=True)
    except OSError as error:
        raise CompareError([f"cannot create {parent} for the report ({error.strerror}); give another -o"]) from None
    if not os.access(parent, os.W_OK) or (os.path.isdir(output) and not os.access(output, os.W_OK)):
        raise CompareError([f"cannot write the report into {output} (no write permission); give another -o"])
    foreign = foreign_entries(output, REPORT_FILES)
    if foreign:  # the report replaces the folder as a whole
        raise CompareError([f"report folder {output} holds {foreign[0]}, which is not a report's file "
                            f"({len(foreign)} such); give a new folder or an earlier report's as -o"])
    remove_leftovers(output)
    return parent


def compare(dataset: Optional[str], configuration: str, output: str,
            trainers: Sequence[str] = DEFAULT_TRAINERS, plans: Sequence[str] = ("nnUNetPlans",),
            folds: Optional[Sequence[str]] = None, prediction_folders: Optional[Sequence[str]] = None,
            labels_folder: Optional[str] = None, images_folder: Optional[str] = None, partial: bool = False,
            timing_device: Optional[str] = "cpu") -> dict:
    """Score, compare and report; returns the summary as a dict. Raises :class:`CompareError` on bad
    input, after writing the report on the usable cases when ``partial`` is set."""
    _output_parent(output)
    problems: List[str] = []
    runs, dataset_name, folds = find_runs(dataset, configuration, trainers, plans, folds, prediction_folders,
                                          problems)
    check_labels(runs, problems)
    if any(p.startswith("label sets differ") for p in problems) and not partial:
        raise CompareError(problems)
    references_folder = reference_folder(dataset_name, labels_folder)
    file_ending = runs[0].dataset_json["file_ending"]
    references = cases_in(references_folder, file_ending)
    cases = check_cases(runs, references, problems)
    keys, names, ignore_label = label_keys(runs[0].dataset_json)
    if problems and not partial:
        raise CompareError(problems)

    per_run_case, usable = score_cases(runs, cases, references, keys, ignore_label, problems)
    if not usable:
        problems.append("no case is usable: nothing to compare, no report written")
        raise CompareError(problems)
    worst = min(usable, key=lambda c: np.mean([per_run_case[r.name][c][k][0] for r in runs for k in keys]))
    reader = reader_for(runs[0].dataset_json, references[worst])
    image = find_image(worst, dataset_name, images_folder, file_ending)
    if image:
        try:
            check_image(reader, image, read_label_map(reader, references[worst]))
        except LabelFileError as error:
            problems.append(f"case {worst}: image {image} for the worst-case picture {error} (or give another "
                            f"images folder with -images)")
            image = None
    if problems and not partial:
        raise CompareError(problems)

    for run in runs:
        log(f"[compare] costs of {run.name} ...")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # deprecation notes of torch.jit from nnU-Net's imports
            run.cost = measure_run_cost(run, configuration, timing_device)

    fold_of = {run.name: fold_of_cases(run, folds) for run in runs}  # the fold whose prediction was scored
    rows = [{"run": run.name, "trainer": run.trainer, "plans": run.plans, "fold": fold_of[run.name].get(case, ""),
             "case": case, "class": names[key], "label_or_region": str(key),
             "dice": per_run_case[run.name][case][key][0], "hd95_mm": per_run_case[run.name][case][key][1]}
            for run in runs for case in usable for key in keys]
    run_names = [r.name for r in runs]
    stats = class_statistics(run_names, usable, keys, names, per_run_case)
    foreground = foreground_dice(run_names, usable, keys, per_run_case)
    summary = {"dataset": dataset_name, "configuration": configuration, "folds": folds,
               "reference_folder": references_folder, "cases": usable, "runs": runs, "stats": stats,
               "keys": keys, "names": names, "foreground_dice": foreground, "worst_case": worst,
               "problems": problems, "timing_device": timing_device,
               "plots": {name: os.path.join(output, name) for name in PLOTS}}

    # the report is written into a folder beside -o, then put in place as a whole (compare.publish)
    staging = staging_folder(output)
    try:
        write_csv(os.path.join(staging, "per_case.csv"), rows)
        log("[compare] plotting ...")
        compare_plots.dice_per_case(os.path.join(staging, "dice_per_case.png"), runs, usable, keys, names,
                                    per_run_case)
        compare_plots.dice_vs_flops(os.path.join(staging, "dice_vs_flops.png"), runs, foreground)
        compare_plots.worst_case(os.path.join(staging, "worst_case.png"), worst, reader, references[worst], image,
                                 {r.name: r.predictions[worst] for r in runs}, keys, names,
                                 {r.name: per_run_case[r.name][worst] for r in runs})
        with open(os.path.join(staging, "summary.md"), "w") as f:
            f.write(render_markdown(summary))
        publish(staging, output)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    summary["table"] = render_table(summary)
    if problems:
        raise CompareError(problems, report=os.path.join(output, "summary.md"))
    return summary


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """nnU-Net's flag style: options with a value take one dash, switches two."""
    parser.add_argument("-d", dest="dataset", help="dataset name or id (needed to read nnUNet_results)")
    parser.add_argument("-c", dest="configuration", default="3d_fullres", help="configuration (default 3d_fullres)")
    parser.add_argument("-tr", dest="trainers", nargs="+", default=list(DEFAULT_TRAINERS),
                        help="trainers, the first is the baseline (default: %(default)s)")
    parser.add_argument("-p", dest="plans", nargs="+", default=["nnUNetPlans"],
                        help="plans identifier, one for all or one per trainer (default nnUNetPlans)")
    parser.add_argument("-f", dest="folds", nargs="+", help="folds to read (default: all fold_N with a "
                                                            "validation folder)")
    parser.add_argument("-i", dest="predictions", nargs="+",
                        help="predictions folders, one per trainer, instead of the cross-validation predictions")
    parser.add_argument("-ref", dest="labels", help="reference labels folder (default: the dataset's "
                                                    "gt_segmentations in nnUNet_preprocessed, else labelsTr)")
    parser.add_argument("-images", "--images", dest="images",
                        help="images folder for the worst-case overlay (default: imagesTr/imagesTs of nnUNet_raw)")
    parser.add_argument("-o", dest="output", required=True, help="report folder")
    parser.add_argument("-device", "--device", dest="device", default="cpu",
                        help="device for the forward-pass timing (default cpu)")
    parser.add_argument("--no_timing", "--no-timing", dest="no_timing", action="store_true",
                        help="do not time a forward pass")
    parser.add_argument("--partial", action="store_true",
                        help="on bad input, still write a report on the usable cases (the exit status stays 1)")


def run(args: argparse.Namespace) -> int:
    try:
        summary = compare(args.dataset, args.configuration, args.output, args.trainers, args.plans, args.folds,
                          args.predictions, args.labels, args.images, args.partial,
                          None if args.no_timing else args.device)
    except CompareError as error:
        for problem in error.problems:
            print(f"nnUNetv2_deconver_compare: error: {problem}", file=sys.stderr)
        if error.report:
            print(f"partial report (usable cases only): {error.report}", file=sys.stderr)
        return 1
    print(summary["table"])
    print(f"\nreport: {os.path.join(os.path.abspath(args.output), 'summary.md')}")
    return 0


def main(argv=None) -> int:
    """``nnUNetv2_deconver_compare``, the same as ``nnunetv2_deconver compare``."""
    parser = argparse.ArgumentParser(prog="nnUNetv2_deconver_compare", description=DESCRIPTION)
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
