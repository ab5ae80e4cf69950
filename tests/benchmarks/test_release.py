"""benchmarks/release.py runs end to end at a small size (the figures mean nothing there: Python's
start-up is most of it): the deploy dir, the token behind p11-kit, the C tools, segway-sign release
and its release verify, and every line the performance section quotes."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.slow


def test_release_benchmark_smoke():
    r = subprocess.run([sys.executable, "-m", "benchmarks.release", "--rootfs-mib", "8", "--fit-mib", "4",
                        "--runs", "1"], cwd=REPO, capture_output=True, text=True, timeout=600)
    # 1: the target is not met, which at this size it cannot be; anything else is a failure.
    assert r.returncode in (0, 1) and "Traceback" not in r.stderr, r.stdout + r.stderr
    for line in ("openssl dgst -sha256 (every input)", "C: cp + veritysetup + openssl cms", "C: cp + mkimage -F -k",
                 "C: cert_create + fiptool create", "segway-sign release",
                 "x the C tools' sum, target <= 1.20x", "segway-sign, flushes made no-ops",
                 "durability: the flushes cost segway-sign"):
        assert line in r.stdout, r.stdout
