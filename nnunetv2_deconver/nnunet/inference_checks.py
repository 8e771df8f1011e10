"""Checks of ``nnUNetv2_predict``'s input folder that nnU-Net makes only in its background workers.

nnU-Net groups the input files by case (``CASE_XXXX.ending``, one file per channel) and reads them in
preprocessing workers; a case with more or fewer channels than the model's fails there, as "Background
workers died" or an IndexError from normalisation. nnU-Net's predictor offers a trainer only one hook
before those workers start: ``build_network_architecture``, which does not receive the input folder.
So the check reads the ``-i`` of the running ``nnUNetv2_predict`` command line and does nothing in any
other program (training, the Python API).
"""
import argparse
import os
import re
import sys
from collections import defaultdict
from typing import Dict, List, Optional, Sequence

__all__ = ["PREDICT_PROGRAMS", "channel_files", "check_channel_files", "check_prediction_inputs"]

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
