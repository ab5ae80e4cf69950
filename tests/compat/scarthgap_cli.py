"""pytest plugin for the run under .venv/compat-scarthgap: the CLI tests call the segway-sign built into
that virtualenv instead of the one in .venv (tests/helpers.py names the latter)."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest


def pytest_configure(config):
    from tests import helpers

    tool = Path(sys.executable).parent / "segway-sign"
    if not tool.exists():
        raise pytest.UsageError(f"{tool} missing: run bash scripts/bootstrap")
    helpers.SEGWAY_SIGN = str(tool)
