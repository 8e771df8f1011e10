"""The comparison's typed records: the nnU-Net folders it reads, each run and what it costs, the problems
found on the way (with the kind that decides where the comparison stops), and the comparison's result."""
import enum
import os
from dataclasses import dataclass, field
from typing import Dict, List, Mapping, Optional, Set, Tuple

from nnunetv2_deconver.tools.metrics import LabelOrRegion

__all__ = ["NnunetFolders", "TrainingLogCosts", "RunCost", "Run", "ProblemKind", "Problems", "ClassStatistics",
           "Comparison"]


@dataclass(frozen=True)
class NnunetFolders:
    """The folders of nnU-Net the comparison reads, None where not set: ``nnUNet_raw`` (images, labelsTr),
    ``nnUNet_preprocessed`` (gt_segmentations), ``nnUNet_results`` (the runs), and the trainer folders of
    ``nnUNet_extTrainer`` (where the trainers that build the networks are found)."""
    raw: Optional[str] = None
    preprocessed: Optional[str] = None
    results: Optional[str] = None
    trainers: Tuple[str, ...] = ()

    @classmethod
    def from_environment(cls, environ: Optional[Mapping[str, str]] = None) -> "NnunetFolders":
        """The folders the environment names (default: this process's), as nnU-Net reads them."""
        environ = os.environ if environ is None else environ
        extra = environ.get("nnUNet_extTrainer")
        return cls(environ.get("nnUNet_raw") or None, environ.get("nnUNet_preprocessed") or None,
                   environ.get("nnUNet_results") or None,
                   tuple(p for p in extra.split(os.pathsep) if p.strip()) if extra is not None else ())


@dataclass
class TrainingLogCosts:
    """From nnU-Net's training logs; None where no log has the line."""
    epoch_seconds: Optional[float] = None  # mean of the ``Epoch time: X s`` lines
    epochs: Optional[int] = None  # the most epochs one log holds
    peak_gpu_mib: Optional[float] = None  # the largest ``Peak GPU memory: X MiB`` line


@dataclass
class RunCost:
    """What a run's network costs; None where it could not be counted (``notes`` says why)."""
    parameters: Optional[int] = None
    flops_per_voxel: Optional[float] = None  # every convolution
    paper_style_flops_per_voxel: Optional[float] = None  # without the NDC update's, as the paper counted
    patch_size: Optional[Tuple[int, ...]] = None
    forward_seconds: Optional[float] = None  # one forward pass at batch 1 over the patch
    training: TrainingLogCosts = field(default_factory=TrainingLogCosts)
    notes: List[str] = field(default_factory=list)


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
    cost: RunCost = field(default_factory=RunCost)


class ProblemKind(enum.Enum):
    """What a problem means for the rest of the comparison."""
    INPUT = "input"  # a run, fold, case or file that cannot be used: the other checks still mean something
    LABEL_SETS = "label sets"  # the runs label different classes: nothing after this compares like with like


@dataclass
class Problems:
    """The problems found so far, one line each naming the run, fold or case, and the kinds among them."""
    lines: List[str] = field(default_factory=list)
    kinds: Set[ProblemKind] = field(default_factory=set)

    def add(self, line: str, kind: ProblemKind = ProblemKind.INPUT) -> None:
        self.lines.append(line)
        self.kinds.add(kind)

    def __bool__(self) -> bool:
        return bool(self.lines)


@dataclass
class ClassStatistics:
    """One class (or region) and run over the scored cases; p-values of the paired tests against the
    baseline run (None for the baseline itself)."""
    dice_mean: float
    dice_median: float
    hd95_mean: float
    hd95_median: float
    p_dice: Optional[float] = None
    p_hd95: Optional[float] = None


@dataclass
class Comparison:
    """The comparison's result, as ``summary.md`` and the terminal table show it."""
    dataset: Optional[str]
    configuration: str
    folds: List[str]  # the cross-validation folds read; empty for predictions folders
    reference_folder: str
    cases: List[str]  # the cases scored
    runs: List[Run]
    keys: List[LabelOrRegion]
    names: Dict[LabelOrRegion, str]
    stats: Dict[Tuple[str, str], ClassStatistics]  # (class name, run name) ->
    foreground_dice: Dict[str, float]  # run name -> Dice over the foreground classes, then the cases
    worst_case: str
    problems: List[str]
    timing_device: Optional[str]
    plots: Dict[str, str]  # file name -> path in the report folder
