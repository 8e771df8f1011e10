"""Peak GPU memory: the trainers' log line (PeakGPUMemoryLog) and the comparison that reads it."""
import pytest
import torch

from nnunetv2_deconver.nnunet.trainer_mixins import PeakGPUMemoryLog
from nnunetv2_deconver.tools.compare import main
from nnunetv2_deconver.tools.compare.costs import training_log_costs
from nnunetv2_deconver.tools.compare.records import TrainingLogCosts

from helpers.compare_results import DATASET, TRAINERS


class _Trainer:
    """The part of nnU-Net's trainer that the mixin talks to."""

    def __init__(self, device):
        self.device = torch.device(device)
        self.logged, self.calls = [], []

    def print_to_log_file(self, *args):
        self.logged.append(" ".join(str(a) for a in args))

    def on_epoch_start(self):
        self.calls.append("start")

    def on_epoch_end(self):
        self.calls.append("end")


class _LoggingTrainer(PeakGPUMemoryLog, _Trainer):
    pass


def test_mixin_logs_nothing_on_cpu(monkeypatch):
    def no_cuda(*args, **kwargs):
        raise AssertionError("CUDA memory queried on a CPU trainer")

    monkeypatch.setattr(torch.cuda, "reset_peak_memory_stats", no_cuda)
    monkeypatch.setattr(torch.cuda, "max_memory_allocated", no_cuda)
    trainer = _LoggingTrainer("cpu")
    trainer.on_epoch_start()
    trainer.on_epoch_end()
    assert trainer.logged == []
    assert trainer.calls == ["start", "end"]  # nnU-Net's own epoch hooks still run


def test_mixin_logs_the_epoch_peak_in_mib_on_cuda(monkeypatch):
    """A stand-in for CUDA: the mixin resets the peak when an epoch starts and logs it when it ends."""
    events = []
    monkeypatch.setattr(torch.cuda, "reset_peak_memory_stats", lambda device: events.append(("reset", device)))
    monkeypatch.setattr(torch.cuda, "max_memory_allocated", lambda device: 1536 * 2 ** 20 + 100)
    trainer = _LoggingTrainer("cuda")
    trainer.on_epoch_start()
    assert events == [("reset", torch.device("cuda"))]
    trainer.on_epoch_end()
    assert trainer.logged == ["Peak GPU memory: 1536 MiB"]
    assert trainer.calls == ["start", "end"]


def test_training_log_parsing(tmp_path):
    log_a, log_b = tmp_path / "a.txt", tmp_path / "b.txt"
    log_a.write_text("2025-01-01 00:00:01.0: Peak GPU memory: 1000 MiB\n2025-01-01: Epoch time: 10.0 s\n"
                     "2025-01-01 00:00:02.0: Peak GPU memory: 1200 MiB\n2025-01-01: Epoch time: 20.0 s\n")
    log_b.write_text("2025-01-01 00:00:01.0: Peak GPU memory: 1536 MiB\n2025-01-01: Epoch time: 30.0 s\n")
    costs = training_log_costs([str(log_a), str(log_b)])
    assert costs == TrainingLogCosts(epoch_seconds=pytest.approx((10 + 20 + 30) / 3), epochs=2, peak_gpu_mib=1536.0)
    log_c = tmp_path / "c.txt"
    log_c.write_text("2025-01-01: Epoch time: 5.0 s\n")
    assert training_log_costs([str(log_c)]).peak_gpu_mib is None
    assert training_log_costs([]) == TrainingLogCosts(epoch_seconds=None, epochs=None, peak_gpu_mib=None)


def test_report_shows_peak_memory_beside_seconds_per_epoch(results, capsys):
    folder = results / "res" / DATASET / f"{TRAINERS[1]}__nnUNetPlans__3d_fullres"
    for fold, peak in ((0, 700), (1, 900)):
        log = folder / f"fold_{fold}" / "training_log_2025_1_1_00_00_00.txt"
        log.write_text(log.read_text() + f"2025-01-01 00:00:09.0: Peak GPU memory: {peak} MiB \n")
    assert main(["-d", "901", "-o", str(results / "report"), "--no-timing"]) == 0
    table = capsys.readouterr().out
    assert "peak MiB" in table
    summary = (results / "report" / "summary.md").read_text()
    rows = {line.split(" | ")[0]: line for line in summary.splitlines() if line.startswith("| nnUNetTrainer")}
    assert "| 4.00 | 900 |" in rows[f"| {TRAINERS[1]}"]  # s/epoch, then the largest peak over the folds
    assert "| 2.00 | n/a |" in rows[f"| {TRAINERS[0]}"]  # the stock trainer logged no memory
