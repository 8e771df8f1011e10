"""Checks nnU-Net 2.8.1 does not make for a Deconver run: diverged training, prediction inputs.

**Training.** nnU-Net trains on when the loss is NaN, logs ``train_loss nan``, saves NaN weights as
``checkpoint_best.pth``/``checkpoint_final.pth`` and exits 0; :func:`check_training_finite` is the
test the Deconver trainers apply at the end of every epoch.

**Prediction.** nnU-Net groups the input files by case (``CASE_XXXX.ending``, one file per channel) and reads them in
preprocessing workers; a case with more or fewer channels than the model's fails there, as "Background
workers died" or an IndexError from normalisation. nnU-Net's predictor offers a trainer only one hook
before those workers start: ``build_network_architecture``, which does not receive the input folder.
So the check reads the ``-i`` of the running ``nnUNetv2_predict`` command line and does nothing in any
other program (training, the Python API).
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
_CHANNEL_FILE = re.compile(r"^(?P<case>.+)_(?P<channel>\d{4})(?P<ending>\..+)$")


def channel_files(folder: str) -> Dict[tuple, List[int]]:
    """``{(case, file ending): sorted channel indices}`` of the files named as nnU-Net names images."""
    found = defaultdict(list)
    for name in os.listdir(folder):
        match = _CHANNEL_FILE.match(name)
        if match and os.path.isfile(os.path.join(folder, name)):
            found[(match["case"], match["ending"])].append(int(match["channel"]))
    return {key: sorted(value) for key, value in found.items()}


def check_channel_files(folder: str, num_input_channels: int) -> None:
    """Raise ValueError (one line) unless every case in ``folder`` has exactly the channel files
    ``_0000`` ... ``_{n-1}`` the model was trained with."""
    expected = list(range(num_input_channels))
    wrong = {key: channels for key, channels in channel_files(folder).items() if channels != expected}
    if wrong:
        (case, ending), channels = sorted(wrong.items())[0]
        names = ", ".join(f"{case}_{c:04d}{ending}" for c in expected)
        raise ValueError(f"nnUNetv2_predict -i {folder}: this model takes {num_input_channels} input channel(s) "
                         f"({names}), but case {case} has channel(s) {channels} ({len(wrong)} case(s) differ); "
                         f"give each case exactly the channels of the training images (dataset.json channel_names)")


def _input_folder(argv: Sequence[str]) -> Optional[str]:
    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument("-i")
    known, _ = parser.parse_known_args(list(argv))
    return known.i


def check_prediction_inputs(num_input_channels: int, argv: Optional[Sequence[str]] = None) -> None:
    """Inside ``nnUNetv2_predict`` (judged by the program name), :func:`check_channel_files` on its ``-i``
    folder; elsewhere, or where ``-i`` is not a folder (nnU-Net reports that itself), nothing."""
    argv = sys.argv if argv is None else argv
    if not argv or os.path.basename(argv[0]) not in PREDICT_PROGRAMS:
        return
    folder = _input_folder(argv[1:])
    if folder and os.path.isdir(folder):
        check_channel_files(folder, num_input_channels)
