"""segway_dev.procs.stop: a child that exits on SIGTERM is reaped; one that ignores it is killed
after the grace period. Real processes, stopped by their Popen."""

from __future__ import annotations

import signal
import subprocess
import time

from segway_dev import procs


def test_terminated_child_is_reaped():
    proc = subprocess.Popen(["sleep", "60"])
    procs.stop(proc, 5)
    assert proc.returncode == -signal.SIGTERM


def test_child_ignoring_sigterm_is_killed_after_the_grace_period():
    # exec: the process stopped is the one that ignores SIGTERM, no orphan is left behind.
    proc = subprocess.Popen(["sh", "-c", 'trap "" TERM; echo ready; exec sleep 60'], stdout=subprocess.PIPE)
    assert proc.stdout.readline() == b"ready\n"
    start = time.monotonic()
    procs.stop(proc, 0.5)
    assert proc.returncode == -signal.SIGKILL and time.monotonic() - start >= 0.5
    proc.stdout.close()


def test_a_child_that_has_exited_is_left_alone():
    proc = subprocess.Popen(["true"])
    proc.wait()
    procs.stop(proc, 5)
    assert proc.returncode == 0
