"""Checks nnU-Net 2.8.1 does not make for a Deconver run: diverged training, prediction inputs.

**Training.** nnU-Net trains on when the loss is NaN, logs ``train_loss nan``, saves NaN weights as
``checkpoint_best.pth``/``checkpoint_final.pth`` and exits 0; :func:`check_training_finite` is the
test the Deconver trainers apply at the end of every epoch.

**Prediction.** nnU-Net groups the input files by case (``CASE_XXXX.ending``, one file per channel) and reads them in
preprocessing workers; a case with more or fewer channels than the model's fails there, as "Background
workers died" or an IndexError from normalisation. nnU-Net's predictor offers a trainer only one hook
before those workers start: ``build_network_architecture``, which does not receive the input folder.
So the check reads the running ``nnUNetv2_predict`` (or ``_from_modelfolder``) command line: the ``-i``
folder, and the model folder's ``dataset.json`` for the image channels and the file ending (a cascade's
``-prev_stage_predictions`` are no image files); it does nothing in any other program (training, the
Python API).
"""
import argparse
import math
import os
import re
import sys
from collections import defaultdict
from typing import Dict, Iterable, List, Optional, Sequence

import torch

__all__ = ["TrainingDivergedError", "check_training_finite", "PREDICT_PROGRAMS", "channel_files",
           "check_channel_files", "check_prediction_inputs"]


class TrainingDivergedError(RuntimeError):
    """The training loss or the weights stopped being finite numbers."""


def check_training_finite(epoch: int, loss: float, parameters: Iterable[torch.Tensor], learning_rate: float) -> None:
    """Raise TrainingDivergedError (one line: the epoch, what is not finite, likely causes, what to do)
    unless the epoch's mean training loss and every weight are finite. One host sync for the weights."""
    weights_finite = bool(torch.stack([p.detach().isfinite().all() for p in parameters]).all())
    if math.isfinite(loss) and weights_finite:
        return
    what = f"the training loss is {loss}" if not math.isfinite(loss) else "the weights hold NaN or inf"
    raise TrainingDivergedError(
        f"epoch {epoch}: {what}, so training stopped before saving this epoch's checkpoints. Likely causes: "
        f"ndc_eps 0 or tiny in the plan, a learning rate too high (now {learning_rate:g}), fp16 overflow under mixed "
        f"precision, or NaN/inf in the images. Fix that, then retrain or resume an earlier checkpoint with --c.")


PREDICT_PROGRAMS = ("nnUNetv2_predict", "nnUNetv2_predict_from_modelfolder")
_CHANNEL_SUFFIX = re.compile(r"^(?P<case>.+)_(?P<channel>\d{4})$")


def channel_files(folder: str, file_ending: str) -> Dict[str, List[int]]:
    """``{case: sorted channel indices}`` of the files ``CASE_XXXX{file_ending}`` in ``folder``: the files
    nnU-Net's predictor reads (it lists only the dataset's file ending, so sidecar files are no cases)."""
    found = defaultdict(list)
    for name in os.listdir(folder):
        if not name.endswith(file_ending) or not os.path.isfile(os.path.join(folder, name)):
            continue
        match = _CHANNEL_SUFFIX.match(name[:-len(file_ending)])
        if match:
            found[match["case"]].append(int(match["channel"]))
    return {case: sorted(channels) for case, channels in found.items()}


def check_channel_files(folder: str, num_image_channels: int, file_ending: str) -> None:
    """Raise ValueError (one line) unless every case in ``folder`` has exactly the channel files
    ``CASE_0000{file_ending}`` ... ``CASE_{n-1}{file_ending}`` of the training images
    (``dataset.json`` ``channel_names``; a cascade's previous-stage segmentation is no image file)."""
    expected = list(range(num_image_channels))
    wrong = {case: channels for case, channels in channel_files(folder, file_ending).items() if channels != expected}
    if wrong:
        case, channels = sorted(wrong.items())[0]
        names = ", ".join(f"{case}_{c:04d}{file_ending}" for c in expected)
        raise ValueError(f"nnUNetv2_predict -i {folder}: this model takes {num_image_channels} image channel(s) "
                         f"({names}), but case {case} has channel(s) {channels} ({len(wrong)} case(s) differ); "
                         f"give each case exactly the channels of the training images (dataset.json channel_names)")


def _arguments(argv: Sequence[str]) -> argparse.Namespace:
    """The options of nnUNetv2_predict(_from_modelfolder) the check needs, with nnU-Net's defaults."""
    parser = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    for flag in ("-i", "-m", "-d", "-c"):
        parser.add_argument(flag)
    # nnU-Net's other one-dash options, so that e.g. -device or -prev_stage_predictions is not read as -d or -p
    for flag in ("-o", "-step_size", "-chk", "-npp", "-nps", "-prev_stage_predictions", "-num_parts", "-part_id",
                 "-device"):
        parser.add_argument(flag)
    parser.add_argument("-f", nargs="+")
    parser.add_argument("-tr", default="nnUNetTrainer")
    parser.add_argument("-p", default="nnUNetPlans")
    known, _ = parser.parse_known_args(list(argv))
    return known


def _model_dataset_json(program: str, args: argparse.Namespace) -> Optional[dict]:
    """The ``dataset.json`` of the model folder the command predicts with, or None where there is none
    (nnU-Net then reports the missing model itself)."""
    from nnunetv2_deconver.nnunet.files import load_json
    if program == "nnUNetv2_predict_from_modelfolder":
        folder = args.m
    else:
        if args.d is None or args.c is None:
            return None
        try:
            from nnunetv2.utilities.file_path_utilities import get_output_folder
            folder = get_output_folder(args.d, args.tr, args.p, args.c)
        except (RuntimeError, ValueError, TypeError):  # unknown dataset, nnUNet_results unset
            return None
    try:
        return load_json(os.path.join(folder, "dataset.json")) if folder else None
    except ValueError:
        return None


def check_prediction_inputs(argv: Optional[Sequence[str]] = None) -> None:
    """Inside ``nnUNetv2_predict`` and ``nnUNetv2_predict_from_modelfolder`` (judged by the program name),
    :func:`check_channel_files` on the ``-i`` folder against the model folder's ``dataset.json`` (its
    ``channel_names`` and ``file_ending``); elsewhere, or where ``-i`` is not a folder or the model folder
    has no ``dataset.json`` (nnU-Net reports those itself), nothing."""
    argv = sys.argv if argv is None else argv
    program = os.path.basename(argv[0]) if argv else ""
    if program not in PREDICT_PROGRAMS:
        return
    args = _arguments(argv[1:])
    if not args.i or not os.path.isdir(args.i):
        return
    dataset_json = _model_dataset_json(program, args)
    if not isinstance(dataset_json, dict) or not isinstance(dataset_json.get("file_ending"), str):
        return
    channels = dataset_json.get("channel_names", dataset_json.get("modality"))
    if isinstance(channels, dict):
        check_channel_files(args.i, len(channels), dataset_json["file_ending"])
