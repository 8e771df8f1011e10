"""The compare report is put in place as a whole: an interruption at any step leaves the old report or the
new one, never a mix; a killed run's staging folders are removed by the next run; a folder holding other
files is not taken as the report folder."""
import os
import subprocess
import sys

import pytest

from nnunetv2_deconver.tools.compare import main
from nnunetv2_deconver.tools.compare import publish as publishing
from nnunetv2_deconver.tools.compare.command import REPORT_FILES


class Killed(BaseException):
    pass


def _old_report(report):
    report.mkdir()
    for name in REPORT_FILES:
        (report / name).write_text("old")


def _moves_fail_at(monkeypatch, k):
    """Every rename, replace or exchange counts; the k-th raises, as a kill at that point would stop the run."""
    calls = []

    def wrap(function):
        def moved(*args, **kwargs):
            calls.append(args)
            if len(calls) == k:
                raise Killed()
            return function(*args, **kwargs)
        return moved

    monkeypatch.setattr(os, "rename", wrap(os.rename))
    monkeypatch.setattr(os, "replace", wrap(os.replace))
    monkeypatch.setattr(publishing, "_exchange", wrap(publishing._exchange))
    return calls


@pytest.mark.parametrize("exchange", [True, False], ids=["exchange", "two renames"])
@pytest.mark.parametrize("k", [1, 2, 3, 4])
def test_an_interrupted_report_is_the_old_or_the_new_one_whole(results, monkeypatch, k, exchange):
    report = results / "report"
    _old_report(report)
    if not exchange:  # a system without renameat2: the old folder is renamed aside first
        monkeypatch.setattr(publishing, "_exchange", lambda a, b: False)
    calls = _moves_fail_at(monkeypatch, k)
    try:
        main(["-d", "901", "-o", str(report), "--no-timing"])
    except Killed:
        pass
    monkeypatch.undo()
    if not exchange and not report.exists():  # killed between the two renames: no folder, never a mix
        assert any(p.startswith(".report.old-") for p in os.listdir(results))  # the old report, kept
        return
    old = {name for name in REPORT_FILES if (report / name).is_file() and (report / name).read_bytes() == b"old"}
    assert old in (set(), set(REPORT_FILES)), f"move {k} of {len(calls)}: old {sorted(old)} beside new files"
    if not old:
        assert sorted(os.listdir(report)) == sorted(REPORT_FILES)


def test_the_report_folder_is_not_private(results):
    report = results / "report"
    assert main(["-d", "901", "-o", str(report), "--no-timing"]) == 0
    umask = os.umask(0)
    os.umask(umask)
    assert report.stat().st_mode & 0o777 == 0o777 & ~umask
    assert main(["-d", "901", "-o", str(report), "--no-timing"]) == 0  # over an earlier report
    assert sorted(os.listdir(report)) == sorted(REPORT_FILES)
    assert [p for p in os.listdir(results) if p.startswith(".report")] == []


def test_a_killed_runs_staging_folders_are_removed(results):
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    leftovers = [f".report.staging-{gone.pid}-abc", f".report.old-{gone.pid}-def"]
    alive = f".report.staging-{os.getppid()}-ghi"  # a run still going: kept
    other = f".other.staging-{gone.pid}-jkl"  # another report's: not ours to judge
    for name in leftovers + [alive, other]:
        (results / name).mkdir()
        (results / name / "per_case.csv").write_text("half")
    assert main(["-d", "901", "-o", str(results / "report"), "--no-timing"]) == 0
    assert sorted(p for p in os.listdir(results) if p.startswith(".")) == sorted([alive, other])


def test_a_folder_holding_other_files_is_refused(results, capsys):
    report = results / "report"
    report.mkdir()
    (report / "notes.txt").write_text("mine")
    assert main(["-d", "901", "-o", str(report), "--no-timing"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "holds notes.txt, which is not a report's file" in err[0], err
    assert sorted(os.listdir(report)) == ["notes.txt"]
