"""``GradScalerSkipLog``: the optimiser steps a GradScaler skipped (its scale went down) are counted per epoch
and logged in the line ``benchmarks/gpu_suite.py`` reads; without a scaler nothing is logged."""
from nnunetv2_deconver.nnunet.trainer_mixins import SKIPPED_STEPS_LOG_PREFIX, GradScalerSkipLog


class _Scaler:
    def __init__(self, scales):
        self.scales, self.index = scales, 0

    def is_enabled(self):
        return True

    def get_scale(self):
        return self.scales[self.index]


class _Base:
    def __init__(self, scaler):
        self.grad_scaler, self.log = scaler, []

    def on_epoch_start(self):
        pass

    def on_epoch_end(self):
        pass

    def train_step(self, batch):
        if self.grad_scaler is not None:
            self.grad_scaler.index += 1  # the step's update: the next scale
        return {"loss": 0.0}

    def print_to_log_file(self, text):
        self.log.append(text)


class _Trainer(GradScalerSkipLog, _Base):
    pass


def test_scale_decreases_are_counted_and_logged():
    trainer = _Trainer(_Scaler([65536.0, 32768.0, 32768.0, 16384.0]))  # two decreases in three steps
    trainer.on_epoch_start()
    for _ in range(3):
        trainer.train_step({})
    trainer.on_epoch_end()
    assert trainer.log == [f"{SKIPPED_STEPS_LOG_PREFIX} 2 of 3 (scale 16384)"]


def test_nothing_is_logged_without_a_scaler():
    trainer = _Trainer(None)
    trainer.on_epoch_start()
    trainer.train_step({})
    trainer.on_epoch_end()
    assert trainer.log == []
