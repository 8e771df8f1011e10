"""Where the installed trainers are, and the environment lines that make nnU-Net find them (printed by
``nnunetv2_deconver env``, :mod:`nnunetv2_deconver.tools.env`)."""
import importlib.util
import os
import shlex
from typing import List, Mapping, Optional

__all__ = ["trainers_folder", "export_lines", "make_trainers_findable"]


def trainers_folder() -> str:
    """The folder of ``nnunetv2_deconver.trainers`` as Python imports it.

    In an editable install that is the repository's ``trainers/``; in a regular install it is
    ``site-packages/nnunetv2_deconver/trainers``. Asking the import system (without importing the
    trainers) gives the right one for both.
    """
    spec = importlib.util.find_spec("nnunetv2_deconver.trainers")
    return os.path.abspath(list(spec.submodule_search_locations)[0])


def make_trainers_findable(environ=None) -> None:
    """Point nnU-Net at the installed trainers where ``nnUNet_extTrainer`` is not set (default: in this process),
    so that a model folder of a Deconver trainer loads."""
    environ = os.environ if environ is None else environ
    if not environ.get("nnUNet_extTrainer"):
        environ["nnUNet_extTrainer"] = trainers_folder()


def export_lines(environ: Optional[Mapping[str, str]] = None, folder: Optional[str] = None) -> List[str]:
    """Shell lines setting ``nnUNet_extTrainer`` to include ``folder`` (default: the installed trainers),
    keeping other folders already listed; comments for nnU-Net's own paths that are not set."""
    environ = os.environ if environ is None else environ
    folder = trainers_folder() if folder is None else folder
    current = [p for p in environ.get("nnUNet_extTrainer", "").split(os.pathsep) if p.strip()]
    others = [p for p in current if os.path.abspath(p) != folder]
    lines = [f"export nnUNet_extTrainer={shlex.quote(os.pathsep.join([folder] + others))}"]
    for name in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results"):
        if not environ.get(name):
            lines.append(f"# {name} is not set; nnU-Net needs it too: export {name}=/path/to/{name}")
    return lines
