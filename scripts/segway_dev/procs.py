"""Stopping a child process the harness started (QEMU, swtpm): by its own Popen, never by name."""

from __future__ import annotations

import subprocess


def stop(proc: subprocess.Popen, timeout: float) -> None:
    """SIGTERM ``proc`` if it still runs, SIGKILL it after ``timeout`` seconds, and reap it."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
