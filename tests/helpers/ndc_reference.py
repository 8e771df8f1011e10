"""An independent float64 NDC written from eq. (1) with explicit shifts (numpy, no convolution routines)."""
import itertools

import numpy as np


def _pad(a: np.ndarray, pads) -> np.ndarray:
    return np.pad(a, [(0, 0), (0, 0)] + [(p, p) for p in pads])


def correlate(source: np.ndarray, filters: np.ndarray, groups: int) -> np.ndarray:
    """Eq. (1): X[c, p] = sum_{e in group(c)} sum_m S_pad[e, p + m] V[c, e, m]; (B, E, *S) -> (B, C, *S)."""
    b, e, *spatial = source.shape
    c, e_per_group, *kernel = filters.shape
    c_per_group = c // groups
    padded = _pad(source, [k // 2 for k in kernel])
    out = np.zeros((b, c, *spatial))
    for co in range(c):
        g = co // c_per_group
        for el in range(e_per_group):
            for m in itertools.product(*[range(k) for k in kernel]):
                shifted = tuple(slice(mi, mi + s) for mi, s in zip(m, spatial))
                window = padded[(slice(None), g * e_per_group + el) + shifted]
                out[:, co] += filters[(co, el) + m] * window
    return out


def adjoint(x: np.ndarray, filters: np.ndarray, groups: int) -> np.ndarray:
    """The adjoint of :func:`correlate` (filter transposed and flipped, eq. 3's V^-); (B, C, *S) -> (B, E, *S)."""
    b, c, *spatial = x.shape
    _, e_per_group, *kernel = filters.shape
    c_per_group = c // groups
    half = [k // 2 for k in kernel]
    padded = _pad(x, half)
    out = np.zeros((b, e_per_group * groups, *spatial))
    for co in range(c):
        g = co // c_per_group
        for el in range(e_per_group):
            for m in itertools.product(*[range(k) for k in kernel]):
                # A(X)[e, q] = sum_c sum_m V[c, e, m] X[c, q - m + M]; padded index q + (2M - m)
                start = [2 * h - mi for h, mi in zip(half, m)]
                window = padded[(slice(None), co) + tuple(slice(st, st + s) for st, s in zip(start, spatial))]
                out[:, g * e_per_group + el] += filters[(co, el) + m] * window
    return out


def ndc_update(x, source, filters, groups, eps=1e-8, iterations=1):
    """Eq. (7) iterated: S <- S * (A(X) + eps) / (A(K(S)) + eps)."""
    numerator = adjoint(x, filters, groups) + eps
    for _ in range(iterations):
        source = source * numerator / (adjoint(correlate(source, filters, groups), filters, groups) + eps)
    return source
