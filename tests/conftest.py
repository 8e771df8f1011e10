"""Shared test set-up: ``helpers`` importable from every test folder; everything under ``e2e/`` marked
``e2e``, so that ``pytest -m "not e2e"`` is the fast loop."""
import os
import sys

import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
_E2E = os.path.join(os.path.dirname(os.path.abspath(__file__)), "e2e") + os.sep


def pytest_collection_modifyitems(items):
    for item in items:
        if str(item.fspath).startswith(_E2E):
            item.add_marker(pytest.mark.e2e)
