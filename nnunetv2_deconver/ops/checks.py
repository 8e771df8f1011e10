"""The argument checks every constructor of the package calls: one rule per kind of value.

Each raises a one-line ValueError that names the argument, what it must be and what it got (exceptions,
not asserts, so they hold under ``python -O``). An integer is an ``int`` or numpy integer, never a
``bool``; a number is a real, finite, non-``bool`` value.
"""
import math
import numbers
from typing import Collection, Optional, Sequence, Tuple

__all__ = ["is_integer", "is_number", "check_integers", "check_choice", "check_odd_kernel", "check_receptive_field",
           "check_update_options"]


def is_integer(value) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def is_number(value) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)


def check_integers(value, name: str, minimum: int = 1) -> None:
    """``value`` (or each entry of a list or tuple of them) is an integer >= ``minimum``."""
    values = value if isinstance(value, (list, tuple)) else [value]
    if not all(is_integer(v) and v >= minimum for v in values):
        raise ValueError(f"{name} must be {'an integer' if value is not values else 'integers'} >= {minimum}, "
                         f"got {value!r}")


def check_choice(value, choices: Collection, name: str) -> None:
    if value not in choices:
        raise ValueError(f"{name} must be one of {tuple(choices)}, got {value!r}")


def check_odd_kernel(kernel: Sequence, name: str, dims: Collection[int] = (1, 2, 3)) -> Tuple[int, ...]:
    """``kernel``: ``len(kernel)`` in ``dims`` axes, each an odd integer (the NDC pads ``k // 2`` each side)."""
    kernel = tuple(kernel)
    if len(kernel) not in dims or not all(is_integer(k) and k >= 1 and k % 2 for k in kernel):
        raise ValueError(f"{name} needs odd kernel sizes (integers) on every axis, in {'/'.join(map(str, dims))} "
                         f"dims, got {kernel}; use kernel sizes such as 3, 5 or (1, 3, 3)")
    return tuple(int(k) for k in kernel)


def check_receptive_field(value: Optional[float], name: str = "receptive_field") -> None:
    """DTC's receptive field: a finite number of input pixels > 0, or ``None`` for unrestricted."""
    if value is not None and not (is_number(value) and value > 0):
        raise ValueError(f"{name} must be a finite number of input pixels > 0 (paper: 2, 4, 10) or None for "
                         f"unrestricted, got {value!r}")


def check_update_options(eps: float, iterations: int, zero_eps_allowed: bool = False) -> None:
    """The NDC update's ``eps``, a finite number > 0 (>= 0 with ``zero_eps_allowed``), and ``iterations``,
    an integer >= 1.

    ``eps`` keeps the ratio of eq. (7) finite where a reconstruction is zero: a layer trained with 0 meets
    0/0 and its loss turns NaN. The function alone admits 0, the setting of Theorem 1, for strictly
    positive operands.
    """
    if not (is_number(eps) and (eps >= 0 if zero_eps_allowed else eps > 0)):
        bound = ">= 0" if zero_eps_allowed else "> 0"
        raise ValueError(f"NDC eps must be a finite number {bound} (the paper's is 1e-8), got {eps!r}")
    check_integers(iterations, "NDC iterations")
