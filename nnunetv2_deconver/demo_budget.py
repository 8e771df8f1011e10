"""The demo's training budget, shared by the demo trainers (``trainers/*_demo.py``) and the demo.

nnU-Net's trainer constructor takes no extra argument, so the demo passes the budget to its
``nnUNetv2_train`` subprocesses through environment variables.
"""
import os

__all__ = ["EPOCHS_VARIABLE", "ITERATIONS_VARIABLE", "DEFAULT_EPOCHS", "DEFAULT_ITERATIONS", "apply_demo_budget"]

EPOCHS_VARIABLE = "NNUNETV2_DECONVER_DEMO_EPOCHS"
ITERATIONS_VARIABLE = "NNUNETV2_DECONVER_DEMO_ITERATIONS"
DEFAULT_EPOCHS = 4
DEFAULT_ITERATIONS = 6


def apply_demo_budget(trainer) -> None:
    """Set epochs, iterations per epoch (validation: a fifth, at least 1) and a checkpoint every epoch."""
    trainer.num_epochs = int(os.environ.get(EPOCHS_VARIABLE, DEFAULT_EPOCHS))
    trainer.num_iterations_per_epoch = int(os.environ.get(ITERATIONS_VARIABLE, DEFAULT_ITERATIONS))
    trainer.num_val_iterations_per_epoch = max(1, trainer.num_iterations_per_epoch // 5)
    trainer.save_every = 1
