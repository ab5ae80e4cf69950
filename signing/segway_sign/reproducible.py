"""``SOURCE_DATE_EPOCH``: the one clock of every time a signed output carries.

Reproducible builds set it; without it the current time is used (or a fixed default where a
format wants one). A value that is not a Unix time is a usage error, wherever it is read.
"""

from __future__ import annotations

import datetime
import os
import time

from .errors import UsageError


def source_date_epoch(default: int | None = None) -> int:
    """``SOURCE_DATE_EPOCH`` as an integer; else ``default``, else now."""
    value = os.environ.get("SOURCE_DATE_EPOCH")
    if value:
        try:
            epoch = int(value)
            datetime.datetime.fromtimestamp(epoch, datetime.timezone.utc)  # in range?
            return epoch
        except (ValueError, OverflowError, OSError):
            raise UsageError(f"SOURCE_DATE_EPOCH={value!r} is not a Unix time") from None
    return int(time.time()) if default is None else default


def source_datetime() -> datetime.datetime:
    """The same instant as an aware UTC datetime, whole seconds."""
    return datetime.datetime.fromtimestamp(source_date_epoch(), datetime.timezone.utc)
