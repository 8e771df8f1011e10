"""Statistics of the comparison: per class and run, mean and median Dice and HD95 over the cases, and
the paired Wilcoxon test of each run against the baseline, case by case."""
import warnings
from typing import Dict, List, Sequence, Tuple

import numpy as np
from scipy.stats import wilcoxon

from nnunetv2_deconver.tools.compare.records import ClassStatistics

__all__ = ["wilcoxon_p", "class_statistics", "foreground_dice"]


def wilcoxon_p(baseline: Sequence[float], other: Sequence[float]) -> float:
    """Two-sided paired Wilcoxon signed-rank p-value; 1 when the pairs are all equal."""
    a, b = np.asarray(baseline, float), np.asarray(other, float)
    keep = np.isfinite(a) & np.isfinite(b)
    a, b = a[keep], b[keep]
    if len(a) == 0:
        return float("nan")
    if np.allclose(a, b):
        return 1.0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return float(wilcoxon(a, b).pvalue)


def class_statistics(run_names: Sequence[str], cases: Sequence[str], keys, names: dict,
                     per_run_case: dict) -> Dict[Tuple[str, str], ClassStatistics]:
    """(class name, run name) -> mean and median Dice and HD95 over ``cases``, with the p-values of the
    paired tests against the first run (None for the first run itself).

    ``per_run_case``: run name -> case -> label or region -> (Dice, HD95 in mm).
    """
    baseline = run_names[0]
    stats = {}
    for key in keys:
        def values(run: str, metric: int) -> List[float]:
            return [per_run_case[run][c][key][metric] for c in cases]

        for run in run_names:
            dices, hds = values(run, 0), values(run, 1)
            entry = ClassStatistics(float(np.mean(dices)), float(np.median(dices)), float(np.mean(hds)),
                                    float(np.median(hds)))
            if run != baseline:
                entry.p_dice = wilcoxon_p(values(baseline, 0), dices)
                entry.p_hd95 = wilcoxon_p(values(baseline, 1), hds)
            stats[(names[key], run)] = entry
    return stats


def foreground_dice(run_names: Sequence[str], cases: Sequence[str], keys, per_run_case: dict) -> Dict[str, float]:
    """Run name -> Dice averaged over the foreground classes of a case, then over the cases."""
    return {run: float(np.mean([np.mean([per_run_case[run][c][k][0] for k in keys]) for c in cases]))
            for run in run_names}
