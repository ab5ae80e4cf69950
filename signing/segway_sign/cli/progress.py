"""A progress bar on stderr that appears only when work takes longer than a second."""

from __future__ import annotations

import sys
import time


class DelayedProgress:
    def __init__(self, label: str, delay: float = 1.0, stream=None):
        self.label, self.delay = label, delay
        self.stream = stream or sys.stderr
        self.start = time.monotonic()
        self.shown = False
        self.last = 0.0

    def __call__(self, done: int, total: int) -> None:
        now = time.monotonic()
        if now - self.start < self.delay or not self.stream.isatty() or total <= 0:
            return
        if self.shown and now - self.last < 0.1 and done < total:
            return
        self.shown, self.last = True, now
        width = 30
        filled = int(width * done / total)
        self.stream.write(f"\r{self.label} [{'#' * filled}{'.' * (width - filled)}] "
                          f"{done >> 20}/{total >> 20} MiB")
        if done >= total:
            self.stream.write("\n")
        self.stream.flush()
