"""What to compare: the runs (trainer/plans pairs), their predictions, the reference labels and images.

Each run's predictions come from nnU-Net's cross-validation folders
(``nnUNet_results/DatasetXXX/TRAINER__PLANS__CONFIG/fold_N/validation``) or from a predictions folder
given on the command line.
"""
import glob
import os
import sys
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence, Tuple

from nnunetv2_deconver.nnunet.files import load_json

__all__ = ["CompareError", "Run", "log", "find_runs", "reference_folder", "cases_in", "check_cases",
           "check_labels", "fold_of_cases", "find_image", "dataset_name_of", "short_list"]


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


def log(message: str) -> None:
    """A progress line on stderr, so that stdout holds only the report table."""
    print(message, file=sys.stderr, flush=True)


def dataset_name_of(dataset: str) -> str:
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


def cases_in(folder: str, file_ending: str) -> Dict[str, str]:
    return {os.path.basename(p)[:-len(file_ending)]: p
            for p in sorted(glob.glob(os.path.join(folder, "*" + file_ending)))}


def short_list(names: Sequence[str], limit: int = 8) -> str:
    names = sorted(names)
    return ", ".join(names[:limit]) + (f" and {len(names) - limit} more" if len(names) > limit else "")


def find_runs(dataset: Optional[str], configuration: str, trainers: Sequence[str], plans: Sequence[str],
              folds: Optional[Sequence[str]], prediction_folders: Optional[Sequence[str]],
              problems: List[str]) -> Tuple[List[Run], Optional[str], List[str]]:
    """The runs to compare, the dataset name, and the folds read; problems are appended to ``problems``."""
    if len(plans) not in (1, len(trainers)):
        raise CompareError([f"give one plans identifier or one per trainer ({len(trainers)}), not {len(plans)}"])
    plans = list(plans) * len(trainers) if len(plans) == 1 else list(plans)
    if len(trainers) < 2:
        raise CompareError(["give at least two trainers to compare"])
    dataset_name = dataset_name_of(dataset) if dataset is not None else None
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
            run.predictions = cases_in(folder, run.dataset_json["file_ending"])
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
            cases = cases_in(validation, run.dataset_json["file_ending"]) if os.path.isdir(validation) else {}
            if not cases:
                problems.append(f"{run.name}: fold {fold} is missing (no predictions in {validation})")
            run.predictions.update(cases)
    return runs, dataset_name, list(folds)


def reference_folder(dataset_name: Optional[str], given: Optional[str]) -> str:
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


def check_labels(runs: List[Run], problems: List[str]) -> None:
    first = runs[0]
    for run in runs[1:]:
        if run.dataset_json["labels"] != first.dataset_json["labels"]:
            problems.append(f"label sets differ: {first.name} has {first.dataset_json['labels']}, "
                            f"{run.name} has {run.dataset_json['labels']}")
        if run.dataset_json["file_ending"] != first.dataset_json["file_ending"]:
            problems.append(f"file endings differ: {first.name} {first.dataset_json['file_ending']}, "
                            f"{run.name} {run.dataset_json['file_ending']}")


def check_cases(runs: List[Run], references: Dict[str, str], problems: List[str]) -> List[str]:
    """Case ids every run predicted and the reference has; each mismatch is a problem."""
    all_cases = set().union(*(r.predictions for r in runs))
    for run in runs:
        missing = all_cases - set(run.predictions)
        if missing:
            problems.append(f"{run.name}: no prediction for case(s) {short_list(missing)} that other runs have")
    no_reference = all_cases - set(references)
    if no_reference:
        problems.append(f"no reference label for case(s) {short_list(no_reference)}")
    return sorted(set.intersection(*(set(r.predictions) for r in runs)) & set(references))


def fold_of_cases(run: Run, folds: List[str]) -> Dict[str, str]:
    fold_of = {}
    for fold in folds:
        if run.results_folder:
            for path in glob.glob(os.path.join(run.results_folder, f"fold_{fold}", "validation", "*")):
                fold_of[os.path.basename(path)[:-len(run.dataset_json["file_ending"])]] = fold
    return fold_of


def find_image(case: str, dataset_name: Optional[str], images_folder: Optional[str],
                file_ending: str) -> Optional[str]:
    folders = [images_folder] if images_folder else []
    if dataset_name and os.environ.get("nnUNet_raw"):
        folders += [os.path.join(os.environ["nnUNet_raw"], dataset_name, s) for s in ("imagesTr", "imagesTs")]
    for folder in folders:
        candidate = os.path.join(folder, f"{case}_0000{file_ending}")
        if os.path.isfile(candidate):
            return candidate
    return None


