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
import contextlib
import csv
import glob
import io
import os
import re
import sys
import time
import warnings
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from nnunetv2_deconver.nnunet.files import load_json
from nnunetv2_deconver.tools.compare.statistics import wilcoxon_p
from nnunetv2_deconver.tools.metrics import LabelOrRegion, case_metrics

__all__ = ["CompareError", "Run", "compare", "main"]

DEFAULT_TRAINERS = ("nnUNetTrainer", "nnUNetTrainerDeconver")


class CompareError(Exception):
    """Bad input; ``problems`` holds one line per problem, each naming the run, fold or case."""

    def __init__(self, problems: Sequence[str]):
        super().__init__("; ".join(problems))
        self.problems = list(problems)


@dataclass
class Run:
    """One trainer/plans pair: where its predictions are and what it costs."""
    name: str
    trainer: str
    plans: str
    results_folder: Optional[str]  # nnUNet_results/DatasetXXX/TRAINER__PLANS__CONFIG, if known
    predictions: Dict[str, str] = field(default_factory=dict)  # case id -> file
    dataset_json: Optional[dict] = None
    plans_json: Optional[dict] = None
    cost: dict = field(default_factory=dict)


def _log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _dataset_name(dataset: str) -> str:
    """``DatasetXXX_Name`` from a name or a numeric id, searched in nnU-Net's three folders."""
    if dataset.startswith("Dataset"):
        return dataset
    if not dataset.isdigit():
        raise CompareError([f"dataset '{dataset}' is neither an id nor a DatasetXXX_Name"])
    prefix = f"Dataset{int(dataset):03d}_"
    for variable in ("nnUNet_results", "nnUNet_preprocessed", "nnUNet_raw"):
        base = os.environ.get(variable)
        if base and os.path.isdir(base):
            hits = sorted(d for d in os.listdir(base) if d.startswith(prefix))
            if hits:
                return hits[0]
    raise CompareError([f"no folder for dataset {dataset} ({prefix}*) in nnUNet_results, nnUNet_preprocessed "
                        f"or nnUNet_raw (are these environment variables set?)"])


def _cases_in(folder: str, file_ending: str) -> Dict[str, str]:
    return {os.path.basename(p)[:-len(file_ending)]: p
            for p in sorted(glob.glob(os.path.join(folder, "*" + file_ending)))}


def _short(names: Sequence[str], limit: int = 8) -> str:
    names = sorted(names)
    return ", ".join(names[:limit]) + (f" and {len(names) - limit} more" if len(names) > limit else "")


def _label_keys(dataset_json: dict) -> Tuple[List[LabelOrRegion], Dict[LabelOrRegion, str], Optional[int]]:
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

def find_runs(dataset: Optional[str], configuration: str, trainers: Sequence[str], plans: Sequence[str],
              folds: Optional[Sequence[str]], prediction_folders: Optional[Sequence[str]],
              problems: List[str]) -> Tuple[List[Run], Optional[str], List[str]]:
    """The runs to compare, the dataset name, and the folds read; problems are appended to ``problems``."""
    if len(plans) not in (1, len(trainers)):
        raise CompareError([f"give one plans identifier or one per trainer ({len(trainers)}), not {len(plans)}"])
    plans = list(plans) * len(trainers) if len(plans) == 1 else list(plans)
    if len(trainers) < 2:
        raise CompareError(["give at least two trainers to compare"])
    dataset_name = _dataset_name(dataset) if dataset is not None else None
    results_base = os.environ.get("nnUNet_results")
    runs = []
    for trainer, plan in zip(trainers, plans):
        folder = None
        if dataset_name and results_base:
            candidate = os.path.join(results_base, dataset_name, f"{trainer}__{plan}__{configuration}")
            folder = candidate if os.path.isdir(candidate) else None
        name = trainer if len(set(plans)) == 1 else f"{trainer} ({plan})"
        runs.append(Run(name, trainer, plan, folder))
    if len({r.name for r in runs}) != len(runs):
        raise CompareError(["the same trainer/plans pair is listed twice"])

    if prediction_folders:
        if len(prediction_folders) != len(runs):
            raise CompareError([f"give one predictions folder per trainer: {len(runs)} trainers, "
                                f"{len(prediction_folders)} folders"])
        for run, folder in zip(runs, prediction_folders):
            if not os.path.isdir(folder):
                raise CompareError([f"{run.name}: predictions folder {folder} does not exist"])
            run.dataset_json = load_json(os.path.join(folder, "dataset.json")) or \
                (load_json(os.path.join(run.results_folder, "dataset.json")) if run.results_folder else None)
            run.plans_json = load_json(os.path.join(folder, "plans.json")) or \
                (load_json(os.path.join(run.results_folder, "plans.json")) if run.results_folder else None)
            if run.dataset_json is None:
                raise CompareError([f"{run.name}: no dataset.json in {folder} (nnUNetv2_predict writes one) "
                                    f"nor in a results folder"])
            run.predictions = _cases_in(folder, run.dataset_json["file_ending"])
            if not run.predictions:
                problems.append(f"{run.name}: no predictions ({run.dataset_json['file_ending']}) in {folder}")
        return runs, dataset_name, []

    if dataset_name is None:
        raise CompareError(["give a dataset (-d) or predictions folders (-i)"])
    if not results_base:
        raise CompareError(["nnUNet_results is not set; set it or give predictions folders with -i"])
    missing = [f"{r.name}: no results folder {r.trainer}__{r.plans}__{configuration} in "
               f"{os.path.join(results_base, dataset_name)}" for r in runs if r.results_folder is None]
    if missing:
        raise CompareError(missing)
    if folds is None:
        found = set()
        for run in runs:
            found |= {os.path.basename(p)[len("fold_"):] for p in glob.glob(os.path.join(run.results_folder, "fold_*"))
                      if os.path.isdir(os.path.join(p, "validation"))}
        folds = sorted(found, key=lambda f: (not f.isdigit(), int(f) if f.isdigit() else 0, f))
        if not folds:
            raise CompareError(["no fold_N/validation folder in any of: " +
                                ", ".join(r.results_folder for r in runs)])
    for run in runs:
        run.dataset_json = load_json(os.path.join(run.results_folder, "dataset.json"))
        run.plans_json = load_json(os.path.join(run.results_folder, "plans.json"))
        if run.dataset_json is None:
            raise CompareError([f"{run.name}: no dataset.json in {run.results_folder}"])
        for fold in folds:
            validation = os.path.join(run.results_folder, f"fold_{fold}", "validation")
            cases = _cases_in(validation, run.dataset_json["file_ending"]) if os.path.isdir(validation) else {}
            if not cases:
                problems.append(f"{run.name}: fold {fold} is missing (no predictions in {validation})")
            run.predictions.update(cases)
    return runs, dataset_name, list(folds)


def _reference_folder(dataset_name: Optional[str], given: Optional[str]) -> str:
    if given:
        if not os.path.isdir(given):
            raise CompareError([f"labels folder {given} does not exist"])
        return given
    candidates = []
    if dataset_name:
        for variable, sub in (("nnUNet_preprocessed", "gt_segmentations"), ("nnUNet_raw", "labelsTr")):
            if os.environ.get(variable):
                candidates.append(os.path.join(os.environ[variable], dataset_name, sub))
    for candidate in candidates:
        if os.path.isdir(candidate):
            return candidate
    raise CompareError(["no reference labels: give a labels folder with -ref" +
                        (f" (looked in {', '.join(candidates)})" if candidates else "")])


# ---------------------------------------------------------------------------------------------- checks

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


def _check_labels(runs: List[Run], problems: List[str]) -> None:
    first = runs[0]
    for run in runs[1:]:
        if run.dataset_json["labels"] != first.dataset_json["labels"]:
            problems.append(f"label sets differ: {first.name} has {first.dataset_json['labels']}, "
                            f"{run.name} has {run.dataset_json['labels']}")
        if run.dataset_json["file_ending"] != first.dataset_json["file_ending"]:
            problems.append(f"file endings differ: {first.name} {first.dataset_json['file_ending']}, "
                            f"{run.name} {run.dataset_json['file_ending']}")


def _check_cases(runs: List[Run], references: Dict[str, str], problems: List[str]) -> List[str]:
    """Case ids every run predicted and the reference has; each mismatch is a problem."""
    all_cases = set().union(*(r.predictions for r in runs))
    for run in runs:
        missing = all_cases - set(run.predictions)
        if missing:
            problems.append(f"{run.name}: no prediction for case(s) {_short(missing)} that other runs have")
    no_reference = all_cases - set(references)
    if no_reference:
        problems.append(f"no reference label for case(s) {_short(no_reference)}")
    return sorted(set.intersection(*(set(r.predictions) for r in runs)) & set(references))


# ---------------------------------------------------------------------------------------------- costs

def _trainer_class(name: str):
    from nnunetv2.utilities.find_objects import recursive_find_trainer_class_by_name
    # importing every trainer module prints the search and deprecation warnings of nnU-Net's imports,
    # which would bury the report's progress lines
    with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        return recursive_find_trainer_class_by_name(name)


def _build_network(run: Run, configuration: str, device):
    import torch
    from nnunetv2.utilities.label_handling.label_handling import determine_num_input_channels
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager
    trainer = _trainer_class(run.trainer)
    plans_manager = PlansManager(run.plans_json)
    configuration_manager = plans_manager.get_configuration(configuration)
    label_manager = plans_manager.get_label_manager(run.dataset_json)
    channels = determine_num_input_channels(plans_manager, configuration_manager, run.dataset_json)
    with torch.device(device):
        network = trainer.build_network_architecture(plans_manager, configuration_manager, channels,
                                                     label_manager.num_segmentation_heads,
                                                     enable_deep_supervision=False)
    return network, channels, tuple(configuration_manager.patch_size)


def measure_run_cost(run: Run, configuration: str, timing_device: Optional[str]) -> dict:
    """Parameters, FLOPs/voxel (all convolutions, and without the NDC update's as the paper counted),
    seconds per training epoch from nnU-Net's logs, and one forward pass over a patch."""
    from nnunetv2_deconver.network.costs import measure_cost
    cost = {"parameters": None, "flops_per_voxel": None, "paper_style_flops_per_voxel": None,
            "epoch_seconds": None, "epochs": None, "forward_seconds": None, "patch_size": None, "notes": []}
    if run.plans_json is not None:
        try:
            network, channels, patch = _build_network(run, configuration, "meta")
            counted = measure_cost(network, channels, patch)
            cost.update(parameters=counted.parameters, flops_per_voxel=counted.flops_per_voxel,
                        paper_style_flops_per_voxel=counted.paper_style_flops_per_voxel, patch_size=patch)
            if timing_device:
                cost["forward_seconds"] = _time_forward(run, configuration, timing_device)
        except Exception as error:  # a cost we cannot count is reported as missing, not fatal
            cost["notes"].append(f"network not built ({type(error).__name__}: {str(error)[:150]})")
    else:
        cost["notes"].append("no plans.json: parameters and FLOPs unknown")
    if run.results_folder:
        epoch_times, epochs = [], 0
        for log in sorted(glob.glob(os.path.join(run.results_folder, "fold_*", "training_log_*.txt"))):
            with open(log) as f:
                times = [float(t) for t in re.findall(r"Epoch time: ([0-9.]+) s", f.read())]
            epoch_times += times
            epochs = max(epochs, len(times))
        if epoch_times:
            cost["epoch_seconds"], cost["epochs"] = float(np.mean(epoch_times)), epochs
    return cost


def _time_forward(run: Run, configuration: str, device: str, repeats: int = 3) -> float:
    """Median seconds of one forward pass at batch 1 over the plan's patch (what sliding-window
    inference runs once per window), with random weights, after one warm-up pass."""
    import torch
    network, channels, patch = _build_network(run, configuration, "cpu")
    network = network.to(device).eval()
    x = torch.randn(1, channels, *patch, device=device)
    times = []
    with torch.no_grad():
        for i in range(repeats + 1):
            if device.startswith("cuda"):
                torch.cuda.synchronize()
            start = time.perf_counter()
            network(x)
            if device.startswith("cuda"):
                torch.cuda.synchronize()
            if i:
                times.append(time.perf_counter() - start)
    return float(np.median(times))


# ---------------------------------------------------------------------------------------------- statistics

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


# ---------------------------------------------------------------------------------------------- main work

def compare(dataset: Optional[str], configuration: str, output: str,
            trainers: Sequence[str] = DEFAULT_TRAINERS, plans: Sequence[str] = ("nnUNetPlans",),
            folds: Optional[Sequence[str]] = None, prediction_folders: Optional[Sequence[str]] = None,
            labels_folder: Optional[str] = None, images_folder: Optional[str] = None, partial: bool = False,
            timing_device: Optional[str] = "cpu") -> dict:
    """Score, compare and report; returns the summary as a dict. Raises :class:`CompareError` on bad
    input, after writing the report on the usable cases when ``partial`` is set."""
    problems: List[str] = []
    runs, dataset_name, folds = find_runs(dataset, configuration, trainers, plans, folds, prediction_folders,
                                          problems)
    _check_labels(runs, problems)
    if any(p.startswith("label sets differ") for p in problems) and not partial:
        raise CompareError(problems)
    reference_folder = _reference_folder(dataset_name, labels_folder)
    file_ending = runs[0].dataset_json["file_ending"]
    references = _cases_in(reference_folder, file_ending)
    cases = _check_cases(runs, references, problems)
    keys, names, ignore_label = _label_keys(runs[0].dataset_json)
    if problems and not partial:
        raise CompareError(problems)

    from nnunetv2.imageio.reader_writer_registry import determine_reader_writer_from_dataset_json
    reader = None
    rows: List[dict] = []
    per_run_case: Dict[str, Dict[str, Dict[LabelOrRegion, Tuple[float, float]]]] = {r.name: {} for r in runs}
    usable = []
    start = time.perf_counter()
    for index, case in enumerate(cases, 1):
        if reader is None:
            with contextlib.redirect_stdout(io.StringIO()):
                reader = determine_reader_writer_from_dataset_json(runs[0].dataset_json, references[case])()
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
                _label_values(run.dataset_json)
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
            _log(f"[compare] scored {index}/{len(cases)} cases x {len(runs)} runs "
                 f"({time.perf_counter() - start:.1f} s)")
    if not cases or not usable:
        problems.append("no case is usable: nothing to compare")
    if problems and not partial:
        raise CompareError(problems)
    if not usable:
        raise CompareError(problems)

    for run in runs:
        _log(f"[compare] costs of {run.name} ...")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # deprecation notes of torch.jit from nnU-Net's imports
            run.cost = measure_run_cost(run, configuration, timing_device)

    fold_of = _fold_of_cases(runs[0], folds)
    for run in runs:
        for case in usable:
            for key in keys:
                d, h = per_run_case[run.name][case][key]
                rows.append({"run": run.name, "trainer": run.trainer, "plans": run.plans,
                             "fold": fold_of.get(case, ""), "case": case, "class": names[key],
                             "label_or_region": str(key), "dice": d, "hd95_mm": h})

    baseline = runs[0]
    stats = {}
    for key in keys:
        for run in runs:
            dices = [per_run_case[run.name][c][key][0] for c in usable]
            hds = [per_run_case[run.name][c][key][1] for c in usable]
            entry = {"dice_mean": float(np.mean(dices)), "dice_median": float(np.median(dices)),
                     "hd95_mean": float(np.mean(hds)), "hd95_median": float(np.median(hds)),
                     "p_dice": None, "p_hd95": None}
            if run is not baseline:
                entry["p_dice"] = wilcoxon_p([per_run_case[baseline.name][c][key][0] for c in usable], dices)
                entry["p_hd95"] = wilcoxon_p([per_run_case[baseline.name][c][key][1] for c in usable], hds)
            stats[(names[key], run.name)] = entry
    foreground = {run.name: float(np.mean([np.mean([per_run_case[run.name][c][k][0] for k in keys])
                                           for c in usable])) for run in runs}

    os.makedirs(output, exist_ok=True)
    _write_csv(os.path.join(output, "per_case.csv"), rows)
    from nnunetv2_deconver.tools.compare import plots as compare_plots
    _log("[compare] plotting ...")
    plots = {
        "dice_per_case.png": compare_plots.dice_per_case(os.path.join(output, "dice_per_case.png"), runs, usable,
                                                         keys, names, per_run_case),
        "dice_vs_flops.png": compare_plots.dice_vs_flops(os.path.join(output, "dice_vs_flops.png"), runs,
                                                         foreground),
    }
    worst = min(usable, key=lambda c: np.mean([per_run_case[r.name][c][k][0] for r in runs for k in keys]))
    image = _find_image(worst, dataset_name, images_folder, file_ending)
    plots["worst_case.png"] = compare_plots.worst_case(
        os.path.join(output, "worst_case.png"), worst, reader, references[worst], image,
        {r.name: r.predictions[worst] for r in runs}, keys, names,
        {r.name: per_run_case[r.name][worst] for r in runs})
    summary = {"dataset": dataset_name, "configuration": configuration, "folds": folds,
               "reference_folder": reference_folder, "cases": usable, "runs": runs, "stats": stats,
               "keys": keys, "names": names, "foreground_dice": foreground, "worst_case": worst,
               "problems": problems, "plots": plots, "timing_device": timing_device}
    with open(os.path.join(output, "summary.md"), "w") as f:
        f.write(render_markdown(summary))
    summary["table"] = render_table(summary)
    if problems:
        raise CompareError(problems)
    return summary


def _label_values(dataset_json: dict) -> set:
    values = set()
    for value in dataset_json["labels"].values():
        values |= set(value) if isinstance(value, (list, tuple)) else {value}
    return values


def _fold_of_cases(run: Run, folds: List[str]) -> Dict[str, str]:
    fold_of = {}
    for fold in folds:
        if run.results_folder:
            for path in glob.glob(os.path.join(run.results_folder, f"fold_{fold}", "validation", "*")):
                fold_of[os.path.basename(path)[:-len(run.dataset_json["file_ending"])]] = fold
    return fold_of


def _find_image(case: str, dataset_name: Optional[str], images_folder: Optional[str],
                file_ending: str) -> Optional[str]:
    folders = [images_folder] if images_folder else []
    if dataset_name and os.environ.get("nnUNet_raw"):
        folders += [os.path.join(os.environ["nnUNet_raw"], dataset_name, s) for s in ("imagesTr", "imagesTs")]
    for folder in folders:
        candidate = os.path.join(folder, f"{case}_0000{file_ending}")
        if os.path.isfile(candidate):
            return candidate
    return None


def _write_csv(path: str, rows: List[dict]) -> None:
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        for row in rows:
            writer.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in row.items()})


# ---------------------------------------------------------------------------------------------- rendering

def _p(value) -> str:
    if value is None:
        return "(baseline)"
    if not np.isfinite(value):
        return "n/a"
    return f"{value:.3g}"


def render_table(summary: dict) -> str:
    """The short terminal table: per class, mean Dice and HD95 per run with p-values, then costs."""
    runs = summary["runs"]
    width = max(len(r.name) for r in runs)
    header = f"{'class':12} {'run':{width}} | {'Dice mean':>9} {'median':>7} {'p':>10} | " \
             f"{'HD95 mm':>8} {'median':>7} {'p':>10}"
    lines = [f"{len(summary['cases'])} cases; p: paired Wilcoxon signed-rank vs {runs[0].name}", header,
             "-" * len(header)]
    for key in summary["keys"]:
        name = summary["names"][key]
        for run in runs:
            s = summary["stats"][(name, run.name)]
            lines.append(f"{name[:12]:12} {run.name:{width}} | {s['dice_mean']:9.4f} {s['dice_median']:7.4f} "
                         f"{_p(s['p_dice']):>10} | {s['hd95_mean']:8.2f} {s['hd95_median']:7.2f} "
                         f"{_p(s['p_hd95']):>10}")
    lines.append("")
    cost_header = f"{'run':{width}} | {'params':>8} {'FLOPs/vox':>10} {'s/epoch':>8} {'fwd s/patch':>11}"
    lines += [cost_header, "-" * len(cost_header)]
    for run in runs:
        c = run.cost
        lines.append(f"{run.name:{width}} | {_human(c.get('parameters')):>8} {_human(c.get('flops_per_voxel')):>10} "
                     f"{_fmt(c.get('epoch_seconds'), 2):>8} {_fmt(c.get('forward_seconds'), 3):>11}")
    return "\n".join(lines)


def render_markdown(summary: dict) -> str:
    runs = summary["runs"]
    source = f"cross-validation predictions, folds {', '.join(summary['folds'])}" if summary["folds"] \
        else "predictions folders"
    lines = [f"# {' vs '.join(r.name for r in runs)}", "",
             f"- dataset: {summary['dataset'] or 'n/a'}, configuration `{summary['configuration']}`",
             f"- {source}; {len(summary['cases'])} cases scored against `{summary['reference_folder']}`",
             f"- baseline of the paired tests: {runs[0].name}", ""]
    if summary["problems"]:
        lines += ["## Problems (partial report: only the cases without problems are scored)", ""]
        lines += [f"- {p}" for p in summary["problems"]] + [""]
    lines += ["## Segmentation", "",
              "| class | run | Dice mean | Dice median | p (Dice) | HD95 mean (mm) | HD95 median (mm) | p (HD95) |",
              "|---|---|---:|---:|---:|---:|---:|---:|"]
    for key in summary["keys"]:
        name = summary["names"][key]
        for run in runs:
            s = summary["stats"][(name, run.name)]
            lines.append(f"| {name} | {run.name} | {s['dice_mean']:.4f} | {s['dice_median']:.4f} | {_p(s['p_dice'])} "
                         f"| {s['hd95_mean']:.2f} | {s['hd95_median']:.2f} | {_p(s['p_hd95'])} |")
    lines += ["", "Mean Dice over all foreground classes: " +
              ", ".join(f"{r.name} {summary['foreground_dice'][r.name]:.4f}" for r in runs), "",
              "## Cost", "",
              "| run | parameters | FLOPs/voxel (all convolutions) | FLOPs/voxel (paper-style) | patch | epochs "
              "| s/epoch (training log) | s per forward pass over a patch |",
              "|---|---:|---:|---:|---|---:|---:|---:|"]
    for run in runs:
        c = run.cost
        patch = "x".join(map(str, c["patch_size"])) if c.get("patch_size") else "n/a"
        lines.append(f"| {run.name} | {_human(c.get('parameters'))} | {_human(c.get('flops_per_voxel'))} | "
                     f"{_human(c.get('paper_style_flops_per_voxel'))} | {patch} | {c.get('epochs') or 'n/a'} | "
                     f"{_fmt(c.get('epoch_seconds'), 2)} | {_fmt(c.get('forward_seconds'), 3)} |")
    notes = [f"- {r.name}: {n}" for r in runs for n in r.cost.get("notes", [])]
    lines += [""] + notes + ([""] if notes else [])
    timing = summary["timing_device"]
    lines += ["## Plots", "", "![Dice per case](dice_per_case.png)", "", "![Dice vs FLOPs](dice_vs_flops.png)", "",
              f"![Worst case](worst_case.png) Worst case: `{summary['worst_case']}` (lowest Dice averaged over runs "
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
              "- Forward pass: batch 1 over the plan's patch, random weights, median of 3 after a warm-up, on " +
              (f"`{timing}`" if timing else "(not measured)") +
              "; sliding-window inference runs one per window (times 8 with test-time mirroring in 3D).", ""]
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------- CLI

DESCRIPTION = ("Compare nnU-Net trainers (default: stock nnUNetTrainer vs nnUNetTrainerDeconver) on one dataset: "
               "Dice, HD95, Wilcoxon p-values, parameters, FLOPs/voxel and times, as a report folder (summary.md, "
               "per_case.csv, PNG plots).")


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
    parser.add_argument("-images", "--images", dest="images", help="images folder for the worst-case overlay (default: imagesTr/imagesTs "
                                         "of nnUNet_raw)")
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
        if args.partial and os.path.isfile(os.path.join(args.output, "summary.md")):
            print(f"partial report (usable cases only): {os.path.join(args.output, 'summary.md')}", file=sys.stderr)
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
