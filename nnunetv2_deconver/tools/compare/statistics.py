"""Paired statistics of the comparison: one run against the baseline, case by case."""
import warnings
from typing import Sequence

import numpy as np
from scipy.stats import wilcoxon

__all__ = ["wilcoxon_p"]


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
