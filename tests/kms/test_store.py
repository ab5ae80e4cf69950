"""The store: one process, one Store per database at a time."""
from __future__ import annotations

import pytest

from segway_kms.errors import ConfigError
from segway_kms.store import Store


def test_a_second_store_on_the_same_database_is_refused(tmp_path):
    first = Store(tmp_path / "kms.db")
    with pytest.raises(ConfigError, match=f"{tmp_path} is in use by another process"):
        Store(tmp_path / "kms.db")
    first.close()
    second = Store(tmp_path / "kms.db")  # closing released the lock
    second.close()
