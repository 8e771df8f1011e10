"""Fixtures shared by the unit tests."""
import pytest

from helpers.compare_results import write_results


@pytest.fixture()
def results(tmp_path, monkeypatch):
    """Results folders of two trainers on six cases (see ``helpers.compare_results.write_results``)."""
    return write_results(tmp_path, monkeypatch)
