"""``python -m benchmarks.fsync_probe ARGS``: segway-sign ARGS (the console script's code) with the
time spent in os.fsync summed and printed on stderr as ``fsync-seconds: S`` when it exits."""

from __future__ import annotations

import atexit
import os
import sys
import time

_spent = 0.0
_fsync = os.fsync


def _timed_fsync(fd):
    global _spent
    start = time.perf_counter()
    try:
        return _fsync(fd)
    finally:
        _spent += time.perf_counter() - start


os.fsync = _timed_fsync
atexit.register(lambda: print(f"fsync-seconds: {_spent:.4f}", file=sys.stderr))

if __name__ == "__main__":
    from segway_sign.cli.main import main

    sys.argv[0] = "segway-sign"
    sys.exit(main())
