"""Scoring: read each case's reference and predictions in full, check that they can be compared
(:mod:`.label_files`), and compute Dice and HD95 per class (or region) with
:mod:`nnunetv2_deconver.tools.metrics`."""
import contextlib
import io
import time
from typing import Dict, List, Optional, Tuple

from nnunetv2_deconver.tools.compare.label_files import (LabelFileError, check_labels_defined, check_same_grid,
                                                         read_label_map)
from nnunetv2_deconver.tools.compare.records import Problems, Run
from nnunetv2_deconver.tools.compare.runs import log
from nnunetv2_deconver.tools.metrics import LabelOrRegion, case_metrics

__all__ = ["label_keys", "label_values", "reader_for", "score_cases", "CaseScores"]

# run name -> case -> label or region -> (Dice, HD95 in mm)
CaseScores = Dict[str, Dict[str, Dict[LabelOrRegion, Tuple[float, float]]]]


def label_keys(dataset_json: dict) -> Tuple[List[LabelOrRegion], Dict[LabelOrRegion, str], Optional[int]]:
    """Foreground labels (or regions) of a dataset.json, their names, and the ignore label."""
    from nnunetv2.utilities.label_handling.label_handling import LabelManager
    manager = LabelManager(dataset_json["labels"], dataset_json.get("regions_class_order"))

    def key_of(value):
        # regions are tuples of labels (a one-label region too), plain labels are ints
        if manager.has_regions:
            return tuple(int(v) for v in value) if isinstance(value, (list, tuple)) else (int(value),)
        return int(value[0]) if isinstance(value, (list, tuple)) else int(value)

    keys = [key_of(k) for k in (manager.foreground_regions if manager.has_regions else manager.foreground_labels)]
    names = {key_of(value): name for name, value in dataset_json["labels"].items()}
    return keys, {k: names.get(k, str(k)) for k in keys}, manager.ignore_label


def label_values(dataset_json: dict) -> set:
    """Every label value a file of the dataset may hold: background, labels, regions' members, ignore label."""
    values = set()
    for value in dataset_json["labels"].values():
        values |= {int(v) for v in value} if isinstance(value, (list, tuple)) else {int(value)}
    return values


def reader_for(dataset_json: dict, example_file: str):
    """nnU-Net's reader/writer for the dataset's files (as nnU-Net picks it), quiet."""
    from nnunetv2.imageio.reader_writer_registry import determine_reader_writer_from_dataset_json
    with contextlib.redirect_stdout(io.StringIO()):
        return determine_reader_writer_from_dataset_json(dataset_json, example_file)()


def score_cases(runs: List[Run], cases: List[str], references: Dict[str, str], keys: List[LabelOrRegion],
                ignore_label: Optional[int], problems: Problems) -> Tuple[CaseScores, List[str]]:
    """Scores of every run on every case, and the cases where every file passed its checks; each file
    that cannot be used is added to ``problems`` as one line naming the run, case and file."""
    defined = label_values(runs[0].dataset_json)
    reader = None
    per_run_case: CaseScores = {r.name: {} for r in runs}
    usable = []
    start = time.perf_counter()
    for index, case in enumerate(cases, 1):
        if reader is None:
            reader = reader_for(runs[0].dataset_json, references[case])
        try:
            reference = read_label_map(reader, references[case])
            check_labels_defined(reference, defined)
        except LabelFileError as error:
            problems.add(f"case {case}: reference label {references[case]} {error}")
            continue
        results = {}
        for run in runs:
            try:
                prediction = read_label_map(reader, run.predictions[case])
                check_same_grid(prediction, reference)
                check_labels_defined(prediction, defined)
            except LabelFileError as error:
                problems.add(f"{run.name}: case {case}: prediction {run.predictions[case]} {error}")
                continue
            results[run.name] = case_metrics(reference.labels, prediction.labels, reference.spacing, keys,
                                             ignore_label)
        if len(results) == len(runs):
            usable.append(case)
            for run in runs:
                per_run_case[run.name][case] = results[run.name]
        if index == len(cases) or index % max(1, len(cases) // 10) == 0:
            log(f"[compare] checked and scored {index}/{len(cases)} cases x {len(runs)} runs "
                f"({time.perf_counter() - start:.1f} s)")
    return per_run_case, usable
