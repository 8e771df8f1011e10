"""Scoring: read each case's reference and predictions, check that they can be compared, and compute
Dice and HD95 per class (or region) with :mod:`nnunetv2_deconver.tools.metrics`."""
import contextlib
import io
import os
import time
from typing import Dict, List, Optional, Tuple

import numpy as np

from nnunetv2_deconver.tools.compare.runs import Run, log
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


# ---------------------------------------------------------------------------------------------- runs
def label_values(dataset_json: dict) -> set:
    values = set()
    for value in dataset_json["labels"].values():
        values |= set(value) if isinstance(value, (list, tuple)) else {value}
    return values



def _read(reader, path: str) -> Tuple[Optional[np.ndarray], Optional[Tuple[float, ...]], Optional[str]]:
    """(label map, spacing per array axis, None) or (None, None, why it cannot be used)."""
    if os.path.getsize(path) == 0:
        return None, None, "empty file"
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            segmentation, properties = reader.read_seg(path)
    except Exception as error:  # any reader failure means the same thing to the user: unreadable
        return None, None, f"unreadable ({type(error).__name__}: {str(error).strip().splitlines()[0][:120]})"
    return segmentation[0], tuple(float(s) for s in properties["spacing"]), None


def reader_for(dataset_json: dict, example_file: str):
    """nnU-Net's reader/writer for the dataset's files (as nnU-Net picks it), quiet."""
    from nnunetv2.imageio.reader_writer_registry import determine_reader_writer_from_dataset_json
    with contextlib.redirect_stdout(io.StringIO()):
        return determine_reader_writer_from_dataset_json(dataset_json, example_file)()


def score_cases(runs: List[Run], cases: List[str], references: Dict[str, str], keys: List[LabelOrRegion],
                ignore_label: Optional[int], problems: List[str]) -> Tuple[CaseScores, List[str]]:
    """Scores of every run on every case, and the cases where every file could be used; each file
    that cannot be used is appended to ``problems``."""
    reader = None
    per_run_case: CaseScores = {r.name: {} for r in runs}
    usable = []
    start = time.perf_counter()
    for index, case in enumerate(cases, 1):
        if reader is None:
            reader = reader_for(runs[0].dataset_json, references[case])
        reference, spacing, why = _read(reader, references[case])
        if why:
            problems.append(f"case {case}: reference label {references[case]} is {why}")
            continue
        case_ok, results = True, {}
        for run in runs:
            prediction, prediction_spacing, why = _read(reader, run.predictions[case])
            if why:
                problems.append(f"{run.name}: case {case}: prediction {run.predictions[case]} is {why}")
                case_ok = False
                continue
            if prediction.shape != reference.shape or \
                    not np.allclose(prediction_spacing, spacing, rtol=1e-3, atol=1e-5):
                problems.append(f"{run.name}: case {case}: geometry differs from the reference: shape "
                                f"{prediction.shape} vs {reference.shape}, spacing "
                                f"{tuple(round(s, 4) for s in prediction_spacing)} vs "
                                f"{tuple(round(s, 4) for s in spacing)}")
                case_ok = False
                continue
            # readers return float arrays; a non-integer value is as wrong as an undefined label
            unknown = {int(v) if float(v).is_integer() else float(v) for v in np.unique(prediction)} - \
                label_values(run.dataset_json)
            if unknown:
                problems.append(f"{run.name}: case {case}: prediction holds labels {sorted(unknown)} that "
                                f"dataset.json does not define")
                case_ok = False
                continue
            results[run.name] = case_metrics(reference, prediction, spacing, keys, ignore_label)
        if case_ok:
            usable.append(case)
            for run in runs:
                per_run_case[run.name][case] = results[run.name]
        if index == len(cases) or index % max(1, len(cases) // 10) == 0:
            log(f"[compare] scored {index}/{len(cases)} cases x {len(runs)} runs "
                f"({time.perf_counter() - start:.1f} s)")
    return per_run_case, usable
