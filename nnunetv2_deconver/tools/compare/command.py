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
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence

import numpy as np

from nnunetv2_deconver.tools.compare import plots as compare_plots
from nnunetv2_deconver.tools.compare.costs import measure_run_cost
from nnunetv2_deconver.tools.compare.label_files import LabelFileError, check_image, read_label_map
from nnunetv2_deconver.tools.compare.publish import foreign_entries, publish, remove_leftovers, staging_folder
from nnunetv2_deconver.tools.compare.records import Comparison, NnunetFolders, ProblemKind, Problems, Run
from nnunetv2_deconver.tools.compare.report import render_markdown, render_table, write_csv
from nnunetv2_deconver.tools.compare.runs import (CompareError, cases_in, check_cases, check_labels, find_image,
                                                  find_runs, fold_of_cases, log, reference_folder)
from nnunetv2_deconver.tools.compare.scoring import CaseScores, label_keys, reader_for, score_cases
from nnunetv2_deconver.tools.compare.statistics import class_statistics, foreground_dice
from nnunetv2_deconver.tools.metrics import LabelOrRegion

__all__ = ["CompareError", "Run", "Comparison", "NnunetFolders", "compare", "main", "DESCRIPTION", "add_arguments",
           "run"]

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
            timing_device: Optional[str] = "cpu", folders: NnunetFolders = NnunetFolders()) -> Comparison:
    """Score, compare and report; returns the comparison. ``folders``: the nnU-Net folders to read (none by
    default: then only predictions folders and a labels folder). Raises :class:`CompareError` on bad input,
    after writing the report on the usable cases when ``partial`` is set."""
    _output_parent(output)
    problems = Problems()
    found = _inputs(dataset, configuration, trainers, plans, folds, prediction_folders, labels_folder, folders,
                    partial, problems)
    scores, usable = score_cases(found.runs, found.cases, found.references, found.keys, found.ignore_label,
                                 problems)
    if not usable:
        problems.add("no case is usable: nothing to compare, no report written")
        raise CompareError(problems.lines)
    worst = _worst_case(found, scores, usable, images_folder, folders, problems)
    _stop_unless_partial(problems, partial)
    _measure_costs(found.runs, configuration, timing_device, folders.trainers)
    run_names = [r.name for r in found.runs]
    comparison = Comparison(
        found.dataset_name, configuration, found.folds, found.references_folder, usable, found.runs, found.keys,
        found.names, class_statistics(run_names, usable, found.keys, found.names, scores),
        foreground_dice(run_names, usable, found.keys, scores), worst.case, problems.lines, timing_device,
        {name: os.path.join(output, name) for name in PLOTS})
    _write_report(output, comparison, scores, worst)
    if problems:
        raise CompareError(problems.lines, report=os.path.join(output, "summary.md"))
    return comparison


@dataclass
class _Inputs:
    """What the comparison reads, checked: the runs and their predictions, the reference labels, the cases
    every run predicted, and the dataset's classes."""
    runs: List[Run]
    dataset_name: Optional[str]
    folds: List[str]
    references_folder: str
    references: Dict[str, str]  # case id -> reference label file
    cases: List[str]
    keys: List[LabelOrRegion]
    names: Dict[LabelOrRegion, str]
    ignore_label: Optional[int]


def _stop_unless_partial(problems: Problems, partial: bool) -> None:
    if problems and not partial:
        raise CompareError(problems.lines)


def _inputs(dataset: Optional[str], configuration: str, trainers: Sequence[str], plans: Sequence[str],
            folds: Optional[Sequence[str]], prediction_folders: Optional[Sequence[str]],
            labels_folder: Optional[str], folders: NnunetFolders, partial: bool, problems: Problems) -> _Inputs:
    """Find and check the runs, the labels and the cases; stop at differing label sets, and (unless
    ``partial``) at any problem."""
    runs, dataset_name, folds = find_runs(dataset, configuration, trainers, plans, folds, prediction_folders,
                                          folders, problems)
    check_labels(runs, problems)
    if ProblemKind.LABEL_SETS in problems.kinds and not partial:
        raise CompareError(problems.lines)
    references_folder = reference_folder(dataset_name, labels_folder, folders)
    references = cases_in(references_folder, runs[0].dataset_json["file_ending"])
    cases = check_cases(runs, references, problems)
    keys, names, ignore_label = label_keys(runs[0].dataset_json)
    _stop_unless_partial(problems, partial)
    return _Inputs(runs, dataset_name, folds, references_folder, references, cases, keys, names, ignore_label)


@dataclass
class _WorstCase:
    """The case the runs score worst on, for the picture: nnU-Net's reader, the reference, the image if any."""
    case: str
    reader: object
    reference: str
    image: Optional[str]


def _worst_case(found: _Inputs, scores: CaseScores, usable: List[str], images_folder: Optional[str],
                folders: NnunetFolders, problems: Problems) -> _WorstCase:
    """The usable case of the lowest Dice averaged over runs and classes, and its image where it matches."""
    worst = min(usable, key=lambda c: np.mean([scores[r.name][c][k][0] for r in found.runs for k in found.keys]))
    reader = reader_for(found.runs[0].dataset_json, found.references[worst])
    image = find_image(worst, found.dataset_name, images_folder, found.runs[0].dataset_json["file_ending"], folders)
    if image:
        try:
            check_image(reader, image, read_label_map(reader, found.references[worst]))
        except LabelFileError as error:
            problems.add(f"case {worst}: image {image} for the worst-case picture {error} (or give another "
                         f"images folder with -images)")
            image = None
    return _WorstCase(worst, reader, found.references[worst], image)


def _measure_costs(runs: List[Run], configuration: str, timing_device: Optional[str],
                   trainer_folders: Sequence[str]) -> None:
    for run in runs:
        log(f"[compare] costs of {run.name} ...")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # deprecation notes of torch.jit from nnU-Net's imports
            run.cost = measure_run_cost(run, configuration, timing_device, trainer_folders)


def _case_rows(comparison: Comparison, scores: CaseScores) -> List[dict]:
    """``per_case.csv``'s rows: run, case and class, with the fold whose prediction was scored."""
    fold_of = {run.name: fold_of_cases(run, comparison.folds) for run in comparison.runs}
    return [{"run": run.name, "trainer": run.trainer, "plans": run.plans, "fold": fold_of[run.name].get(case, ""),
             "case": case, "class": comparison.names[key], "label_or_region": str(key),
             "dice": scores[run.name][case][key][0], "hd95_mm": scores[run.name][case][key][1]}
            for run in comparison.runs for case in comparison.cases for key in comparison.keys]


def _write_report(output: str, comparison: Comparison, scores: CaseScores, worst: _WorstCase) -> None:
    """The report, written into a folder beside ``output``, then put in place as a whole (compare.publish)."""
    runs, cases, keys, names = comparison.runs, comparison.cases, comparison.keys, comparison.names
    staging = staging_folder(output)
    try:
        write_csv(os.path.join(staging, "per_case.csv"), _case_rows(comparison, scores))
        log("[compare] plotting ...")
        compare_plots.dice_per_case(os.path.join(staging, "dice_per_case.png"), runs, cases, keys, names, scores)
        compare_plots.dice_vs_flops(os.path.join(staging, "dice_vs_flops.png"), runs, comparison.foreground_dice)
        compare_plots.worst_case(os.path.join(staging, "worst_case.png"), worst.case, worst.reader, worst.reference,
                                 worst.image, {r.name: r.predictions[worst.case] for r in runs}, keys, names,
                                 {r.name: scores[r.name][worst.case] for r in runs})
        with open(os.path.join(staging, "summary.md"), "w") as f:
            f.write(render_markdown(comparison))
        publish(staging, output)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


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
        comparison = compare(args.dataset, args.configuration, args.output, args.trainers, args.plans, args.folds,
                             args.predictions, args.labels, args.images, args.partial,
                             None if args.no_timing else args.device, NnunetFolders.from_environment())
    except CompareError as error:
        for problem in error.problems:
            print(f"nnUNetv2_deconver_compare: error: {problem}", file=sys.stderr)
        if error.report:
            print(f"partial report (usable cases only): {error.report}", file=sys.stderr)
        return 1
    print(render_table(comparison))
    print(f"\nreport: {os.path.join(os.path.abspath(args.output), 'summary.md')}")
    return 0


def main(argv=None) -> int:
    """``nnUNetv2_deconver_compare``, the same as ``nnunetv2_deconver compare``."""
    parser = argparse.ArgumentParser(prog="nnUNetv2_deconver_compare", description=DESCRIPTION)
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
