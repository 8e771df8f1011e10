"""What to compare: the runs (trainer/plans pairs), their predictions, the reference labels and images.

Each run's predictions come from nnU-Net's cross-validation folders
(``nnUNet_results/DatasetXXX/TRAINER__PLANS__CONFIG/fold_N/validation``) or from a predictions folder
given on the command line.
"""
import glob
import os
import sys
from typing import Dict, List, Optional, Sequence, Tuple

from nnunetv2_deconver.nnunet.files import load_json
from nnunetv2_deconver.ops import is_integer
from nnunetv2_deconver.tools.compare.records import NnunetFolders, ProblemKind, Problems, Run

__all__ = ["CompareError", "Run", "log", "find_runs", "reference_folder", "cases_in", "check_cases",
           "check_labels", "fold_of_cases", "find_image", "dataset_name_of", "short_list", "read_dataset_json",
           "read_plans_json"]


class CompareError(Exception):
    """Bad input; ``problems`` holds one line per problem, each naming the run, fold or case.
    ``report``: the partial report's summary.md where one was written (``--partial``), else None."""

    def __init__(self, problems: Sequence[str], report: Optional[str] = None):
        super().__init__("; ".join(problems))
        self.problems = list(problems)
        self.report = report


def log(message: str) -> None:
    """A progress line on stderr, so that stdout holds only the report table."""
    print(message, file=sys.stderr, flush=True)


def dataset_name_of(dataset: str, folders: NnunetFolders) -> str:
    """``DatasetXXX_Name`` from a name or a numeric id, searched in nnU-Net's three folders."""
    if dataset.startswith("Dataset"):
        return dataset
    if not dataset.isdigit():
        raise CompareError([f"dataset '{dataset}' is neither an id nor a DatasetXXX_Name"])
    prefix = f"Dataset{int(dataset):03d}_"
    for base in (folders.results, folders.preprocessed, folders.raw):
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


def _read_json(run_name: str, folders: Sequence[str], file_name: str) -> Tuple[Optional[dict], Optional[str]]:
    """The first ``file_name`` found in ``folders`` and its path, or (None, None); a file that is not
    valid JSON is a :class:`CompareError`."""
    for folder in folders:
        path = os.path.join(folder, file_name)
        try:
            content = load_json(path)
        except (ValueError, OSError) as error:
            raise CompareError([f"{run_name}: {error if isinstance(error, ValueError) else path + ' is unreadable'}"
                                f"; restore it (nnU-Net copies it from nnUNet_preprocessed/DatasetXXX)"]) from None
        if content is not None:
            if not isinstance(content, dict):
                raise CompareError([f"{run_name}: {path} holds a JSON {type(content).__name__}, not an object; "
                                    f"restore it (nnU-Net copies it from nnUNet_preprocessed/DatasetXXX)"])
            return content, path
    return None, None


def read_dataset_json(run_name: str, folders: Sequence[str]) -> dict:
    """The run's dataset.json, checked: ``labels`` (background 0; ints or, for regions, lists of ints,
    with ``regions_class_order``) as nnU-Net's LabelManager accepts them, and a ``file_ending``."""
    dataset_json, path = _read_json(run_name, folders, "dataset.json")
    if dataset_json is None:
        raise CompareError([f"{run_name}: no dataset.json in {' nor '.join(folders)} (nnU-Net writes one beside "
                            f"the results and nnUNetv2_predict beside its predictions); copy the dataset's"])
    fix = "fix it or copy the dataset's from nnUNet_preprocessed/DatasetXXX"
    labels = dataset_json.get("labels")
    if not isinstance(labels, dict) or labels.get("background") != 0:
        raise CompareError([f"{run_name}: {path} has no 'labels' object with \"background\": 0; {fix}"])
    for name, value in labels.items():
        members = value if isinstance(value, list) else [value]
        if not members or not all(is_integer(v) for v in members):
            raise CompareError([f"{run_name}: {path}: label '{name}' is {value!r}, not an integer or a list of "
                                f"integers; {fix}"])
    ending = dataset_json.get("file_ending")
    if not isinstance(ending, str) or not ending.startswith("."):
        raise CompareError([f"{run_name}: {path} has no 'file_ending' such as \".nii.gz\"; {fix}"])
    from nnunetv2.utilities.label_handling.label_handling import LabelManager
    try:
        LabelManager(labels, dataset_json.get("regions_class_order"))
    except Exception as error:  # nnU-Net checks the labels with asserts; any failure means the same
        raise CompareError([f"{run_name}: {path}: nnU-Net rejects its labels ({type(error).__name__}: "
                            f"{str(error).strip()[:120] or 'regions need regions_class_order'}); {fix}"]) from None
    return dataset_json


def read_plans_json(run_name: str, folders: Sequence[str], configuration: str) -> Optional[dict]:
    """The run's plans.json, checked to hold ``configuration``; None where there is none (costs unknown)."""
    plans_json, path = _read_json(run_name, folders, "plans.json")
    if plans_json is None:
        return None
    configurations = plans_json.get("configurations")
    if not isinstance(configurations, dict) or configuration not in configurations:
        known = ", ".join(configurations) if isinstance(configurations, dict) else "none"
        raise CompareError([f"{run_name}: {path} has no configuration '{configuration}' (it has: {known}); "
                            f"give the configuration with -c or restore the plans"])
    return plans_json


def find_runs(dataset: Optional[str], configuration: str, trainers: Sequence[str], plans: Sequence[str],
              folds: Optional[Sequence[str]], prediction_folders: Optional[Sequence[str]], folders: NnunetFolders,
              problems: Problems) -> Tuple[List[Run], Optional[str], List[str]]:
    """The runs to compare, the dataset name, and the folds read; problems are added to ``problems``."""
    if len(plans) not in (1, len(trainers)):
        raise CompareError([f"give one plans identifier or one per trainer ({len(trainers)}), not {len(plans)}"])
    plans = list(plans) * len(trainers) if len(plans) == 1 else list(plans)
    if len(trainers) < 2:
        raise CompareError(["give at least two trainers to compare"])
    dataset_name = dataset_name_of(dataset, folders) if dataset is not None else None
    runs = _named_runs(trainers, plans, configuration, dataset_name, folders.results)
    if prediction_folders:
        _read_prediction_folders(runs, prediction_folders, configuration, problems)
        return runs, dataset_name, []
    if dataset_name is None:
        raise CompareError(["give a dataset (-d) or predictions folders (-i)"])
    if not folders.results:
        raise CompareError(["nnUNet_results is not set; set it or give predictions folders with -i"])
    missing = [f"{r.name}: no results folder {r.trainer}__{r.plans}__{configuration} in "
               f"{os.path.join(folders.results, dataset_name)}" for r in runs if r.results_folder is None]
    if missing:
        raise CompareError(missing)
    folds = _folds_found(runs) if folds is None else list(folds)
    for run in runs:
        run.dataset_json = read_dataset_json(run.name, [run.results_folder])
        run.plans_json = read_plans_json(run.name, [run.results_folder], configuration)
        _read_folds(run, folds, problems)
    return runs, dataset_name, folds


def _named_runs(trainers: Sequence[str], plans: List[str], configuration: str, dataset_name: Optional[str],
                results_base: Optional[str]) -> List[Run]:
    """A run per trainer/plans pair, with its results folder where it exists; named by the trainer alone
    where all share one plans identifier."""
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
    return runs


def _read_prediction_folders(runs: List[Run], prediction_folders: Sequence[str], configuration: str,
                             problems: Problems) -> None:
    """Each run's predictions, dataset.json and plans.json from its predictions folder (then its results)."""
    if len(prediction_folders) != len(runs):
        raise CompareError([f"give one predictions folder per trainer: {len(runs)} trainers, "
                            f"{len(prediction_folders)} folders"])
    for run, folder in zip(runs, prediction_folders):
        if not os.path.isdir(folder):
            raise CompareError([f"{run.name}: predictions folder {folder} does not exist"])
        where = [folder] + ([run.results_folder] if run.results_folder else [])
        run.dataset_json = read_dataset_json(run.name, where)
        run.plans_json = read_plans_json(run.name, where, configuration)
        run.predictions = cases_in(folder, run.dataset_json["file_ending"])
        if not run.predictions:
            problems.add(f"{run.name}: no predictions ({run.dataset_json['file_ending']}) in {folder}")


def _folds_found(runs: List[Run]) -> List[str]:
    """Every fold with a ``fold_N/validation`` folder in any run, numbers first in order."""
    found = set()
    for run in runs:
        found |= {os.path.basename(p)[len("fold_"):] for p in glob.glob(os.path.join(run.results_folder, "fold_*"))
                  if os.path.isdir(os.path.join(p, "validation"))}
    folds = sorted(found, key=lambda f: (not f.isdigit(), int(f) if f.isdigit() else 0, f))
    if not folds:
        raise CompareError(["no fold_N/validation folder in any of: " + ", ".join(r.results_folder for r in runs)])
    return folds


def _read_folds(run: Run, folds: Sequence[str], problems: Problems) -> None:
    """The run's cross-validation predictions of ``folds``; a missing fold and a case predicted in two
    folds are problems."""
    fold_of = {}
    twice = {}
    for fold in folds:
        validation = os.path.join(run.results_folder, f"fold_{fold}", "validation")
        cases = cases_in(validation, run.dataset_json["file_ending"]) if os.path.isdir(validation) else {}
        if not cases:
            problems.add(f"{run.name}: fold {fold} is missing (no predictions in {validation})")
        for case in cases:
            if case in fold_of:
                twice.setdefault((fold_of[case], fold), []).append(case)
            fold_of[case] = fold
        run.predictions.update(cases)
    for (first, later), cases in sorted(twice.items()):
        # each case must be scored once; which fold's prediction would be a silent choice
        problems.add(f"{run.name}: case(s) {short_list(sorted(cases))} predicted in fold {first} and fold "
                     f"{later}; give -f with folds that predict each case once (e.g. -f 0 1 2 3 4), "
                     f"--partial scores fold {later}'s")


def reference_folder(dataset_name: Optional[str], given: Optional[str], folders: NnunetFolders) -> str:
    if given:
        if not os.path.isdir(given):
            raise CompareError([f"labels folder {given} does not exist"])
        return given
    candidates = []
    if dataset_name:
        for base, sub in ((folders.preprocessed, "gt_segmentations"), (folders.raw, "labelsTr")):
            if base:
                candidates.append(os.path.join(base, dataset_name, sub))
    for candidate in candidates:
        if os.path.isdir(candidate):
            return candidate
    raise CompareError(["no reference labels: give a labels folder with -ref" +
                        (f" (looked in {', '.join(candidates)})" if candidates else "")])


def check_labels(runs: List[Run], problems: Problems) -> None:
    """A problem for each run whose label set (kind ``LABEL_SETS``) or file ending differs from the first's."""
    first = runs[0]
    for run in runs[1:]:
        if run.dataset_json["labels"] != first.dataset_json["labels"]:
            problems.add(f"label sets differ: {first.name} has {first.dataset_json['labels']}, "
                         f"{run.name} has {run.dataset_json['labels']}", ProblemKind.LABEL_SETS)
        if run.dataset_json["file_ending"] != first.dataset_json["file_ending"]:
            problems.add(f"file endings differ: {first.name} {first.dataset_json['file_ending']}, "
                         f"{run.name} {run.dataset_json['file_ending']}")


def check_cases(runs: List[Run], references: Dict[str, str], problems: Problems) -> List[str]:
    """Case ids every run predicted and the reference has; each mismatch is a problem."""
    all_cases = set().union(*(r.predictions for r in runs))
    for run in runs:
        missing = all_cases - set(run.predictions)
        if missing:
            problems.add(f"{run.name}: no prediction for case(s) {short_list(missing)} that other runs have")
    no_reference = all_cases - set(references)
    if no_reference:
        problems.add(f"no reference label for case(s) {short_list(no_reference)}")
    return sorted(set.intersection(*(set(r.predictions) for r in runs)) & set(references))


def fold_of_cases(run: Run, folds: List[str]) -> Dict[str, str]:
    fold_of = {}
    for fold in folds:
        if run.results_folder:
            for path in glob.glob(os.path.join(run.results_folder, f"fold_{fold}", "validation", "*")):
                fold_of[os.path.basename(path)[:-len(run.dataset_json["file_ending"])]] = fold
    return fold_of


def find_image(case: str, dataset_name: Optional[str], images_folder: Optional[str], file_ending: str,
               folders: NnunetFolders) -> Optional[str]:
    """The case's first channel in ``images_folder``, else in the dataset's imagesTr or imagesTs; None if none."""
    searched = [images_folder] if images_folder else []
    if dataset_name and folders.raw:
        searched += [os.path.join(folders.raw, dataset_name, s) for s in ("imagesTr", "imagesTs")]
    for folder in searched:
        candidate = os.path.join(folder, f"{case}_0000{file_ending}")
        if os.path.isfile(candidate):
            return candidate
    return None


