"""Fixtures for the release tests (helpers live in release_fixtures.py)."""

import pytest

from tests.signing.release.release_fixtures import FileKeys


@pytest.fixture
def file_keys(tmp_path):
    return FileKeys(tmp_path)
