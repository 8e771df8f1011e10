"""Reading nnU-Net plans for Deconver: the network arguments a plan implies, and their checks.

A plan configuration either names Deconver itself (``architecture.network_class_name`` ends in
``Deconver``, as in ``nnUNetDeconverPlans.json`` or a configuration merged by hand from a fragment of
``plans_overrides/``) and its ``arch_kwargs`` are used as they are, or it names nnU-Net's own U-Net and
Deconver takes that plan's topology (stages, widths, kernel sizes, strides), so that the stock
``nnUNetPlans`` give a like-for-like swap at the same patch and batch size. Either way every value is
checked by building the network on the meta device, so a bad value fails with the plans file and the
configuration named, before nnU-Net creates any folder.
"""
import os
from typing import Optional, Sequence

import numpy as np

__all__ = ["DECONVER_CLASS_NAME", "PLACEHOLDER", "PlanError", "plans_file_of", "configuration_name_of",
           "deconver_kwargs_from_configuration", "check_deconver_kwargs", "check_patch_divisible",
           "replace_kernel", "is_deconver", "DEFAULT_FRAGMENTS", "FRAGMENT_PLACEHOLDERS", "shipped_fragments",
           "load_fragment", "check_fragment", "fill_fragment"]

DECONVER_CLASS_NAME = "nnunetv2_deconver.network.Deconver"

# the topology keys every U-Net-like nnU-Net plan carries and Deconver takes under the same names
_TOPOLOGY_KEYS = ("n_stages", "features_per_stage", "conv_op", "kernel_sizes", "strides")
# a string value starting with this is a placeholder of a plans_overrides fragment, to be filled in
PLACEHOLDER = "$"


class PlanError(ValueError):
    """A plan Deconver cannot be built from; the message names the plans file and the fix."""


def plans_file_of(plans_manager) -> str:
    """Where nnU-Net read this plan from (``$nnUNet_preprocessed/DATASET/PLANS.json``), for messages."""
    from nnunetv2.paths import nnUNet_preprocessed
    base = nnUNet_preprocessed.get() if nnUNet_preprocessed.is_set() else "$nnUNet_preprocessed"
    return os.path.join(base, plans_manager.dataset_name, plans_manager.plans_name + ".json")


def configuration_name_of(plans_manager, configuration_manager) -> str:
    """The name of ``configuration_manager``'s configuration in the plans (inference only passes the manager)."""
    for name in plans_manager.available_configurations:
        if plans_manager.get_configuration(name).configuration == configuration_manager.configuration:
            return name
    return configuration_manager.data_identifier


def is_deconver(class_name: str) -> bool:
    return isinstance(class_name, str) and class_name.split(".")[-1] == "Deconver"


def deconver_parameters() -> set:
    """The ``arch_kwargs`` Deconver accepts (its constructor's, less what nnU-Net passes itself)."""
    import inspect
    from nnunetv2_deconver.network import Deconver
    return set(inspect.signature(Deconver).parameters) - {"input_channels", "num_classes", "deep_supervision"}


def deconver_kwargs_from_configuration(architecture: dict, configuration_name: str, plans_file: str) -> dict:
    """Deconver's keyword arguments (without ``input_channels``, ``num_classes``, ``deep_supervision``).

    Args:
        architecture: the configuration's ``architecture`` entry
            (``network_class_name``, ``arch_kwargs``, ``_kw_requires_import``).
        configuration_name, plans_file: only for error messages.
    """
    class_name = architecture.get("network_class_name", "")
    arch_kwargs = dict(architecture.get("arch_kwargs", {}))
    if is_deconver(class_name):
        unknown = sorted(set(arch_kwargs) - deconver_parameters())
        missing = [k for k in _TOPOLOGY_KEYS if k not in arch_kwargs]
        if unknown or missing:
            raise PlanError(f"{plans_file}: configuration '{configuration_name}' names Deconver but its arch_kwargs "
                            f"have unknown keys {unknown} and lack {missing}. Regenerate the file with "
                            f"nnUNetv2_deconver_plan.")
        unfilled = sorted(k for k, v in arch_kwargs.items() if isinstance(v, str) and v.startswith(PLACEHOLDER))
        if unfilled:
            raise PlanError(f"{plans_file}: configuration '{configuration_name}' has unfilled placeholders in "
                            f"arch_kwargs {unfilled} ({', '.join(arch_kwargs[k] for k in unfilled)}); write the "
                            f"values there (see plans_overrides/README.md) or run nnUNetv2_deconver_plan.")
        return arch_kwargs
    missing = [k for k in _TOPOLOGY_KEYS if k not in arch_kwargs]
    if missing:
        raise PlanError(f"{plans_file}: configuration '{configuration_name}' uses {class_name}, which has no "
                        f"U-Net topology ({', '.join(missing)} missing), so Deconver cannot take its place. "
                        f"Use a U-Net plan (nnUNetPlans, nnUNetResEnc*Plans) or run nnUNetv2_deconver_plan.")
    kwargs = {k: arch_kwargs[k] for k in _TOPOLOGY_KEYS}
    return kwargs


def check_deconver_kwargs(kwargs: dict, configuration_name: str, plans_file: str) -> None:
    """Raise PlanError (one line: file, configuration, the network's own message) unless Deconver accepts
    ``kwargs``; the network is built on the meta device, so nothing is allocated."""
    import torch
    from nnunetv2_deconver.network import Deconver
    try:
        with torch.device("meta"):
            Deconver(input_channels=1, num_classes=1, **kwargs)
    except (ValueError, TypeError) as error:
        raise PlanError(f"{plans_file}: configuration '{configuration_name}': {error}") from None


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


# --- plans_overrides fragments: a configuration in nnU-Net's plans format with placeholders -------------

def fragment_folder() -> str:
    """Where the shipped fragments are (the package ``nnunetv2_deconver.plans_overrides``)."""
    import nnunetv2_deconver.plans_overrides as shipped
    return os.path.dirname(os.path.abspath(shipped.__file__))


DEFAULT_FRAGMENTS = {3: "deconver_k3", 5: "deconver_k5"}
_FRAGMENT_KEYS = ("inherits_from", "architecture", "patch_size", "batch_size")
_ARCHITECTURE_KEYS = ("network_class_name", "arch_kwargs", "_kw_requires_import")
# placeholder -> where the planner takes its value from (``$kernel_sizes:K`` takes an odd kernel K)
FRAGMENT_PLACEHOLDERS = {
    "$configuration": "the stock configuration's name (inherits_from)",
    "$n_stages": "the stock n_stages",
    "$features_per_stage": "min(C0 * 2^l, 512) with C0 = -base_channels",
    "$conv_op": "the stock conv_op",
    "$kernel_sizes:K": "the stock kernel_sizes with every axis > 1 set to K",
    "$strides": "the stock strides",
    "$stem_kernel_size": "the stock kernel_sizes[0]",
    "$patch_size": "fitted to -gpu_memory_target",
    "$batch_size": "fitted to -gpu_memory_target",
}


def shipped_fragments() -> list:
    """Names of the fragments installed with the package (``plans_overrides/*.json``)."""
    return sorted(f[:-5] for f in os.listdir(fragment_folder()) if f.endswith(".json"))


def _placeholders(value) -> list:
    if isinstance(value, str):
        return [value] if value.startswith(PLACEHOLDER) else []
    if isinstance(value, dict):
        return [p for v in value.values() for p in _placeholders(v)]
    if isinstance(value, list):
        return [p for v in value for p in _placeholders(v)]
    return []


def _kernel_of(placeholder: str) -> Optional[int]:
    """K of ``$kernel_sizes:K`` (an odd integer >= 1), else None."""
    prefix = "$kernel_sizes:"
    digits = placeholder[len(prefix):] if placeholder.startswith(prefix) else ""
    return int(digits) if digits.isdigit() and int(digits) % 2 == 1 else None


def load_fragment(name_or_path: str) -> tuple:
    """``(fragment, path)`` for a shipped fragment's name or a ``.json`` file; checked (see
    :func:`check_fragment`). Raises PlanError (one line) where it is missing, not JSON or not valid."""
    from nnunetv2_deconver.nnunet.files import load_json
    path = name_or_path if os.sep in name_or_path or name_or_path.endswith(".json") else \
        os.path.join(fragment_folder(), name_or_path + ".json")
    if not os.path.isfile(path):
        raise PlanError(f"plans fragment {name_or_path} not found: give a .json file or one of {shipped_fragments()}")
    try:
        fragment = load_json(path)
    except ValueError as error:
        raise PlanError(str(error)) from None
    check_fragment(fragment, path)
    return fragment, path


def check_fragment(fragment, path: str) -> None:
    """Raise PlanError unless ``fragment`` is a Deconver configuration with known keys and placeholders.

    Top level: ``inherits_from``, ``architecture`` (required: ``network_class_name`` naming Deconver and
    ``arch_kwargs`` with Deconver's argument names), ``patch_size`` and ``batch_size`` (the planner fits
    both: they must be ``$patch_size`` and ``$batch_size``).
    """
    if not isinstance(fragment, dict) or not isinstance(fragment.get("architecture"), dict):
        raise PlanError(f"{path}: a plans fragment is a JSON object with an 'architecture' entry")
    architecture = fragment["architecture"]
    arch_kwargs = architecture.get("arch_kwargs")
    unknown = [k for k in fragment if k not in _FRAGMENT_KEYS] + \
        [f"architecture.{k}" for k in architecture if k not in _ARCHITECTURE_KEYS] + \
        ([f"arch_kwargs.{k}" for k in sorted(set(arch_kwargs) - deconver_parameters())]
         if isinstance(arch_kwargs, dict) else [])
    if unknown:
        raise PlanError(f"{path}: unknown key(s) {unknown}; a fragment has {list(_FRAGMENT_KEYS)}, an architecture "
                        f"{list(_ARCHITECTURE_KEYS)} and arch_kwargs named as Deconver's arguments")
    if not is_deconver(architecture.get("network_class_name")) or not isinstance(arch_kwargs, dict):
        raise PlanError(f"{path}: architecture must name Deconver ({DECONVER_CLASS_NAME}) and hold arch_kwargs")
    missing = [k for k in _TOPOLOGY_KEYS if k not in arch_kwargs]
    if missing:
        raise PlanError(f"{path}: arch_kwargs lack {missing}")
    bad = [p for p in _placeholders(fragment)
           if p not in FRAGMENT_PLACEHOLDERS and _kernel_of(p) is None]
    fitted = [k for k in ("patch_size", "batch_size") if fragment.get(k, f"${k}") != f"${k}"]
    if bad or fitted:
        raise PlanError(f"{path}: unknown placeholder(s) {bad} (known: {list(FRAGMENT_PLACEHOLDERS)})" if bad else
                        f"{path}: {fitted} must be {['$' + k for k in fitted]}: the planner fits them to the memory "
                        f"target")


def fill_fragment(fragment: dict, configuration_name: str, stock: dict, base_channels: int) -> dict:
    """The fragment with every placeholder but ``$patch_size``/``$batch_size`` replaced from the stock
    configuration ``stock`` (resolved, a U-Net plan) and ``base_channels``."""
    import copy
    from nnunetv2_deconver.network.presets import paper_widths
    arch = stock["architecture"]["arch_kwargs"]
    values = {"$configuration": configuration_name, "$n_stages": arch["n_stages"],
              "$features_per_stage": paper_widths(base_channels, arch["n_stages"]), "$conv_op": arch["conv_op"],
              "$strides": [list(s) for s in arch["strides"]], "$stem_kernel_size": list(arch["kernel_sizes"][0])}

    def fill(value):
        if isinstance(value, dict):
            return {k: fill(v) for k, v in value.items()}
        if isinstance(value, list):
            return [fill(v) for v in value]
        if isinstance(value, str) and _kernel_of(value) is not None:
            return replace_kernel(arch["kernel_sizes"], _kernel_of(value))
        return copy.deepcopy(values.get(value, value)) if isinstance(value, str) else value

    return fill(fragment)
