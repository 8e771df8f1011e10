"""The one place where a trainer's network options meet the plan's: Deconver's arguments are the plan's
(:func:`~nnunetv2_deconver.nnunet.plans.deconver_kwargs_from_configuration`), then the trainer's NDC kernel
size, then the trainer's overrides; where a plan that names Deconver sets a value itself and the trainer
replaces it with another, a :class:`PlanValueOverridden` warning names both."""
import warnings
from typing import Mapping, Optional

from nnunetv2_deconver.nnunet.plans import replace_kernel

__all__ = ["PlanValueOverridden", "merge_network_options"]


class PlanValueOverridden(UserWarning):
    """A trainer replaced a value that a Deconver plan sets itself."""


def merge_network_options(plan_kwargs: dict, ndc_kernel_size: Optional[int], overrides: Mapping[str, object],
                          deconver_plan: bool, trainer_name: str, configuration_name: str, plans_file: str) -> dict:
    """Deconver's arguments: ``plan_kwargs`` with every NDC kernel axis > 1 set to ``ndc_kernel_size`` (None:
    the plan's; the stem keeps the plan's kernel), then ``overrides`` set as they are. With ``deconver_plan``
    each replaced value the plan sets itself is warned about (``configuration_name`` and ``plans_file``
    name where)."""
    kwargs = dict(plan_kwargs)
    wanted = dict(overrides)
    if ndc_kernel_size is not None:
        kwargs.setdefault("stem_kernel_size", kwargs["kernel_sizes"][0])
        wanted = {"kernel_sizes": replace_kernel(kwargs["kernel_sizes"], ndc_kernel_size), **wanted}
    for key, value in wanted.items():
        if deconver_plan and key in plan_kwargs and plan_kwargs[key] != value:
            warnings.warn(f"{plans_file}: configuration '{configuration_name}' sets {key}={plan_kwargs[key]!r}; "
                          f"{trainer_name} uses {key}={value!r}", PlanValueOverridden, stacklevel=2)
        kwargs[key] = value
    return kwargs
