"""The paper's learning-rate schedule (Sec. IV-A3): linear warm-up over the first 1% of training from
lr/10 to lr, then cosine annealing to 0, computed in closed form from the epoch so that nnU-Net's
``lr_scheduler.step(current_epoch)`` after a ``--c`` resume lands on the same value.
"""
import math

import torch

from torch.optim.lr_scheduler import _LRScheduler

__all__ = ["warmup_cosine_lr", "WarmupCosineLRScheduler", "adamw_warmup_cosine"]


def warmup_cosine_lr(epoch: int, initial_lr: float, num_epochs: int, warmup_fraction: float = 0.01,
                     warmup_start_factor: float = 0.1) -> float:
    """Learning rate for ``epoch`` (0-based) of ``num_epochs``.

    Warm-up lasts ``max(1, round(warmup_fraction * num_epochs))`` epochs, rising linearly from
    ``warmup_start_factor * initial_lr``; the cosine then runs from ``initial_lr`` at the end of
    warm-up to 0 at ``num_epochs``.
    """
    warmup = max(1, round(warmup_fraction * num_epochs))
    if epoch < warmup:
        return initial_lr * (warmup_start_factor + (1 - warmup_start_factor) * epoch / warmup)
    progress = (epoch - warmup) / max(1, num_epochs - warmup)
    return initial_lr * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))


class WarmupCosineLRScheduler(_LRScheduler):
    """Per-epoch scheduler in nnU-Net's style (cf. ``PolyLRScheduler``): ``step(epoch)`` sets the lr."""

    def __init__(self, optimizer, initial_lr: float, num_epochs: int, warmup_fraction: float = 0.01,
                 current_step: int = None):
        self.optimizer = optimizer
        self.initial_lr = initial_lr
        self.num_epochs = num_epochs
        self.warmup_fraction = warmup_fraction
        self.ctr = 0
        super().__init__(optimizer, current_step if current_step is not None else -1)

    def step(self, current_step=None):
        if current_step is None or current_step == -1:
            current_step = self.ctr
            self.ctr += 1
        new_lr = warmup_cosine_lr(current_step, self.initial_lr, self.num_epochs, self.warmup_fraction)
        for param_group in self.optimizer.param_groups:
            param_group["lr"] = new_lr
        self._last_lr = [group["lr"] for group in self.optimizer.param_groups]

    def get_last_lr(self):
        return self._last_lr


def adamw_warmup_cosine(trainer) -> tuple:
    """AdamW over ``trainer.network``'s parameters at ``trainer.initial_lr`` and ``trainer.weight_decay``, with
    the warm-up and cosine schedule over ``trainer.num_epochs`` (warm-up ``trainer.warmup_fraction``): the
    ``(optimizer, lr_scheduler)`` pair nnU-Net's ``configure_optimizers`` returns."""
    optimizer = torch.optim.AdamW(trainer.network.parameters(), lr=trainer.initial_lr,
                                  weight_decay=trainer.weight_decay)
    return optimizer, WarmupCosineLRScheduler(optimizer, trainer.initial_lr, trainer.num_epochs,
                                              trainer.warmup_fraction)
