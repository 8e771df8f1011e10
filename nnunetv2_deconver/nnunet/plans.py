"""Reading nnU-Net plans for Deconver: the network arguments a plan implies, checks, atomic writes.

A plan configuration either names Deconver itself (``architecture.network_class_name`` ends in
``Deconver``, as in ``nnUNetDeconverPlans.json``) and its ``arch_kwargs`` are used as they are, or it
names nnU-Net's own U-Net and Deconver takes that plan's topology (stages, widths, kernel sizes,
strides), so that the stock ``nnUNetPlans`` give a like-for-like swap at the same patch and batch size.
"""
import os
from typing import Optional, Sequence

import numpy as np

__all__ = ["DECONVER_CLASS_NAME", "PlanError", "plans_file_of", "deconver_kwargs_from_configuration",
           "check_patch_divisible", "replace_kernel"]

DECONVER_CLASS_NAME = "nnunetv2_deconver.network.Deconver"

# the topology keys every U-Net-like nnU-Net plan carries and Deconver takes under the same names
_TOPOLOGY_KEYS = ("n_stages", "features_per_stage", "conv_op", "kernel_sizes", "strides")


class PlanError(ValueError):
    """A plan Deconver cannot be built from; the message names the plans file and the fix."""


def plans_file_of(plans_manager) -> str:
    """Where nnU-Net read this plan from (``$nnUNet_preprocessed/DATASET/PLANS.json``), for messages."""
    from nnunetv2.paths import nnUNet_preprocessed
    base = nnUNet_preprocessed.get() if nnUNet_preprocessed.is_set() else "$nnUNet_preprocessed"
    return os.path.join(base, plans_manager.dataset_name, plans_manager.plans_name + ".json")


def _is_deconver(class_name: str) -> bool:
    return class_name.split(".")[-1] == "Deconver"


def deconver_kwargs_from_configuration(architecture: dict, configuration_name: str, plans_file: str) -> dict:
    """Deconver's keyword arguments (without ``input_channels``, ``num_classes``, ``deep_supervision``).

    Args:
        architecture: the configuration's ``architecture`` entry
            (``network_class_name``, ``arch_kwargs``, ``_kw_requires_import``).
        configuration_name, plans_file: only for error messages.
    """
    class_name = architecture.get("network_class_name", "")
    arch_kwargs = dict(architecture.get("arch_kwargs", {}))
    if _is_deconver(class_name):
        import inspect
        from nnunetv2_deconver.network import Deconver
        accepted = set(inspect.signature(Deconver).parameters) - {"input_channels", "num_classes", "deep_supervision"}
        unknown = sorted(set(arch_kwargs) - accepted)
        missing = [k for k in _TOPOLOGY_KEYS if k not in arch_kwargs]
        if unknown or missing:
            raise PlanError(f"{plans_file}: configuration '{configuration_name}' names Deconver but its arch_kwargs "
                            f"have unknown keys {unknown} and lack {missing}. Regenerate the file with "
                            f"nnUNetv2_deconver_plan.")
        return arch_kwargs
    missing = [k for k in _TOPOLOGY_KEYS if k not in arch_kwargs]
    if missing:
        raise PlanError(f"{plans_file}: configuration '{configuration_name}' uses {class_name}, which has no "
                        f"U-Net topology ({', '.join(missing)} missing), so Deconver cannot take its place. "
                        f"Use a U-Net plan (nnUNetPlans, nnUNetResEnc*Plans) or run nnUNetv2_deconver_plan.")
    kwargs = {k: arch_kwargs[k] for k in _TOPOLOGY_KEYS}
    return kwargs


def check_patch_divisible(patch_size: Sequence[int], strides: Sequence[Sequence[int]], configuration_name: str,
                          plans_file: str) -> None:
    """Raise PlanError unless the patch is divisible by the product of the strides on every axis."""
    from nnunetv2_deconver.network.deconver import stride_divisor
    divisor = stride_divisor(strides)
    if len(patch_size) != len(divisor) or any(int(p) % int(d) for p, d in zip(patch_size, divisor)):
        fixed = [int(np.ceil(p / d) * d) for p, d in zip(patch_size, divisor)]
        raise PlanError(f"{plans_file}: configuration '{configuration_name}' has patch_size {list(patch_size)}, "
                        f"which Deconver's strides cannot take: every axis must be divisible by the product of "
                        f"the strides {list(divisor)}. Set patch_size to e.g. {fixed} or re-plan "
                        f"with nnUNetv2_deconver_plan.")


def replace_kernel(kernel_sizes: Sequence[Sequence[int]], kernel: Optional[int]) -> list:
    """Every NDC kernel axis larger than 1 set to ``kernel`` (axes of size 1 stay 1: anisotropic stages)."""
    if kernel is None:
        return [list(k) for k in kernel_sizes]
    return [[1 if v == 1 else int(kernel) for v in k] for k in kernel_sizes]
