"""``nnunetv2_deconver env``: the shell lines that let ``nnUNetv2_train``/``nnUNetv2_predict`` find the
Deconver trainers (:func:`nnunetv2_deconver.nnunet.trainer_discovery.export_lines`)."""
import argparse

from nnunetv2_deconver.nnunet.trainer_discovery import export_lines

__all__ = ["add_arguments", "run"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """``nnunetv2_deconver env`` takes no arguments."""


def run(args: argparse.Namespace) -> int:
    print("\n".join(export_lines()))
    return 0
