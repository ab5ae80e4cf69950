"""``python -m benchmarks.fsync_probe ARGS``: segway-sign ARGS (the console script's code) with the
time spent in os.fsync summed and printed on stderr as ``fsync-seconds: S`` when it exits.

With ``SEGWAY_BENCH_NO_FLUSH=1`` os.fsync and segway_sign.atomic.start_writeback do nothing: the
same run without its flushes, so that the difference is what durability costs. Only for measuring:
such a run's outputs are not durable."""

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
if os.environ.get("SEGWAY_BENCH_NO_FLUSH") == "1":
    import segway_sign.atomic

    os.fsync = lambda fd: None
    # Before any module takes it with "from ..atomic import start_writeback" (the CLI imports lazily).
    segway_sign.atomic.start_writeback = lambda fd, offset=0, length=0: None
atexit.register(lambda: print(f"fsync-seconds: {_spent:.4f}", file=sys.stderr))

if __name__ == "__main__":
    from segway_sign.cli.main import main

    sys.argv[0] = "segway-sign"
    sys.exit(main())
