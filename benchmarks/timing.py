"""Timing shared by the benchmarks: medians of repeated runs, a child's own peak RSS, the limits
(``openssl dgst -sha256`` over the same bytes; ``cp`` + ``fsync`` of the same file) and the lines
that print a ratio beside its target.

Every figure is the median of ``runs`` samples taken in the same run, interleaved with the figures
it is compared with, so a machine that gets busier slows all of them alike. The load average is
printed before and after: a run on a loaded machine says so.
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

REPO = Path(__file__).resolve().parents[1]
PYTHON = str(REPO / ".venv" / "bin" / "python")
SEGWAY_SIGN = str(REPO / ".venv" / "bin" / "segway-sign")


@dataclass
class Samples:
    """Repeated measurements of one thing (seconds, or KiB for RSS)."""
    name: str
    values: list[float] = field(default_factory=list)

    def add(self, value: float) -> float:
        self.values.append(value)
        return value

    @property
    def median(self) -> float:
        return statistics.median(self.values)

    def spread(self) -> str:
        return f"{min(self.values):.2f}-{max(self.values):.2f}" if self.values else "-"


def median_time(func: Callable[[], object], runs: int) -> float:
    """Median wall time of ``runs`` calls of ``func``."""
    samples = []
    for _ in range(runs):
        start = time.perf_counter()
        func()
        samples.append(time.perf_counter() - start)
    return statistics.median(samples)


def percentile(samples: list[float], q: float) -> float:
    """The ``q`` quantile (0..1) of ``samples``, nearest rank."""
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


@dataclass
class Child:
    seconds: float
    max_rss_kib: int
    stdout: bytes
    stderr: bytes


def run(args: list[str], env: dict | None = None, cwd: str | os.PathLike | None = None) -> Child:
    """Run a command to completion: wall time and its own peak RSS (wait4, not the maximum over
    every child so far). Exits the benchmark with the command's stderr if it fails."""
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        start = time.perf_counter()
        proc = subprocess.Popen(args, env=env, cwd=cwd, stdout=out, stderr=err, stdin=subprocess.DEVNULL)
        _, status, usage = os.wait4(proc.pid, 0)
        elapsed = time.perf_counter() - start
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        stdout, stderr = out.read(), err.read()
    if proc.returncode != 0:
        sys.exit(f"{args[0]} failed ({proc.returncode}): {stderr.decode(errors='replace').strip()[-2000:]}")
    return Child(elapsed, usage.ru_maxrss, stdout, stderr)


def openssl_dgst(path: Path) -> float:
    """The hashing limit: ``openssl dgst -sha256`` over the file (OpenSSL's SHA instructions)."""
    return run(["openssl", "dgst", "-sha256", str(path)]).seconds


def durable_copy(src: Path, dst: Path) -> tuple[float, float]:
    """The writing limit: ``cp`` of the file, then ``fsync`` of the copy and of its directory.
    Returns (cp seconds, fsync seconds)."""
    dst.unlink(missing_ok=True)
    cp = run(["cp", str(src), str(dst)]).seconds
    start = time.perf_counter()
    fd = os.open(dst, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    dfd = os.open(dst.parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)
    fsync = time.perf_counter() - start
    dst.unlink()
    return cp, fsync


def installed_env(env: dict | None = None) -> dict:
    """The environment for segway-sign as installed: from compiled bytecode, as pip and Yocto's
    packaging install it. This checkout is an editable install without it, and with
    PYTHONDONTWRITEBYTECODE set every start would compile segway_sign again (0.1-0.2 s here), so
    the bytecode goes to a cache of the benchmarks' own in the temporary directory."""
    env = dict(os.environ if env is None else env)
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    env["PYTHONPYCACHEPREFIX"] = str(Path(tempfile.gettempdir()) / f"segway-bench-pycache-{os.getuid()}")
    return env


def segway_with_fsync_time(args: list[str], env: dict | None = None, flush: bool = True) -> tuple[Child, float]:
    """Run segway-sign (the console script's code) with os.fsync timed, from compiled bytecode
    (installed_env); (child, fsync seconds). ``flush=False``: the same run with its flushes made
    no-ops (fsync_probe's SEGWAY_BENCH_NO_FLUSH), to measure what durability costs."""
    env = installed_env(env)
    if not flush:
        env["SEGWAY_BENCH_NO_FLUSH"] = "1"
    child = run([PYTHON, "-m", "benchmarks.fsync_probe", *args], env=env, cwd=REPO)
    fsync = 0.0
    for line in child.stderr.decode(errors="replace").splitlines():
        if line.startswith("fsync-seconds: "):
            fsync = float(line.split()[1])
    return child, fsync


def load() -> str:
    one, five, _ = os.getloadavg()
    return f"load average {one:.2f} (1 min), {five:.2f} (5 min) on {os.cpu_count()} CPUs"


def ratio_line(name: str, value: float, base: float, target: float | None, base_name: str) -> str:
    ratio = value / base
    if target is None:
        return f"  {name}: {ratio:.2f}x {base_name} (reported only)"
    verdict = "met" if ratio <= target else "NOT met"
    return f"  {name}: {ratio:.2f}x {base_name}, target <= {target:.2f}x: {verdict}"
