import datetime

import pytest

from segway_sign.errors import UsageError
from segway_sign.reproducible import source_date_epoch, source_datetime


def test_source_date_epoch_fixes_every_time(monkeypatch):
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1700000000")
    assert source_date_epoch() == 1700000000
    assert source_datetime() == datetime.datetime(2023, 11, 14, 22, 13, 20, tzinfo=datetime.timezone.utc)


def test_unset_means_now_or_the_default(monkeypatch):
    monkeypatch.delenv("SOURCE_DATE_EPOCH", raising=False)
    assert source_date_epoch(default=0) == 0
    assert abs(source_datetime().timestamp() - datetime.datetime.now().timestamp()) < 5


@pytest.mark.parametrize("value", ["yesterday", "1.5", "99999999999999999999"])
def test_a_value_that_is_not_a_unix_time_is_a_usage_error(monkeypatch, value):
    monkeypatch.setenv("SOURCE_DATE_EPOCH", value)
    with pytest.raises(UsageError, match="SOURCE_DATE_EPOCH"):
        source_date_epoch()
