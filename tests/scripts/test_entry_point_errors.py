"""The entry points in scripts/ end an expected failure with one line naming the problem and a
non-zero exit, never a traceback: a missing tool, a QEMU that cannot start, a download that fails,
a bad option. Each failure here is real (an empty PATH, an address-space limit QEMU cannot boot
under, an apt source on a closed loopback port), not simulated inside the code."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
PYTHON = sys.executable


def run(argv: list[str], *, env: dict | None = None, timeout: float = 180) -> subprocess.CompletedProcess:
    full_env = dict(os.environ, PYTHONPATH=str(REPO / "scripts"))
    full_env.update(env or {})
    return subprocess.run(argv, capture_output=True, text=True, timeout=timeout, env=full_env,
                          stdin=subprocess.DEVNULL, cwd=REPO)


def one_line_error(r: subprocess.CompletedProcess, prefix: str) -> str:
    assert r.returncode != 0, r.stdout + r.stderr
    assert "Traceback" not in r.stderr + r.stdout, r.stderr
    lines = [line for line in r.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith(prefix), r.stderr
    return lines[0]


def test_demo_help_prints_help_and_leaves_outputs_alone(tmp_path):
    marker = REPO / "out" / "demo" / "kept-by-help"
    marker.parent.mkdir(parents=True, exist_ok=True)
    marker.write_text("x")
    try:
        r = run([PYTHON, "-m", "segway_dev.demo", "--help"])
        assert r.returncode == 0 and "usage: scripts/demo" in r.stdout
        assert marker.is_file()
    finally:
        marker.unlink()


def test_demo_names_missing_tools_before_doing_anything():
    r = run([PYTHON, "-m", "segway_dev.demo"], env={"PATH": "/nonexistent"})
    line = one_line_error(r, "demo: error: missing:")
    assert "qemu-system-aarch64 (apt: qemu-system-arm)" in line and "mkimage (apt: u-boot-tools)" in line


def test_harness_names_a_missing_qemu(tmp_path):
    r = run([PYTHON, "-m", "segway_dev", "dump-dtb", "arm64", str(tmp_path / "virt.dtb")],
            env={"PATH": "/nonexistent"})
    line = one_line_error(r, "segway_dev: error:")
    assert "qemu-system-aarch64 is not installed" in line


@pytest.mark.qemu
def test_harness_reports_a_qemu_that_cannot_start(tmp_path):
    # 1 GiB of guest RAM cannot be mapped under a 512 MiB address-space limit: QEMU itself refuses.
    r = run(["prlimit", "--as=536870912", "--", PYTHON, "-m", "segway_dev", "dump-dtb", "arm64",
             str(tmp_path / "virt.dtb")])
    line = one_line_error(r, "segway_dev: error: qemu-system-aarch64 could not dump the device tree:")
    assert "memory" in line.lower()
    assert not any(tmp_path.iterdir())


def test_harness_reports_a_failed_download(tmp_path):
    # An apt source on a loopback port nothing listens on: apt-get update fails at once.
    sources = tmp_path / "sources.list"
    sources.write_text("deb [trusted=yes] http://127.0.0.1:9/debian bookworm main\n")
    conf = tmp_path / "apt.conf"
    conf.write_text(f'Dir::Etc::sourcelist "{sources}";\nDir::Etc::sourceparts "{tmp_path / "none"}";\n'
                    'Acquire::Retries "0";\n')
    fdt = tmp_path / "virt.dtb"
    fdt.write_bytes(b"\xd0\x0d\xfe\xed")
    r = run([PYTHON, "-m", "segway_dev", "kernel-fit", str(tmp_path / "k.itb"), str(fdt)],
            env={"APT_CONFIG": str(conf), "SEGWAY_CACHE_DIR": str(tmp_path / "cache")})
    line = one_line_error(r, "segway_dev: error:")
    assert "apt-get" in line


@pytest.mark.parametrize("args, message", [
    (["--bogus"], "check-fresh: unknown option --bogus"),
    # Inside the fresh root there is no git: then that is the one line.
    (["--ref", "no-such-revision"], "check-fresh: no-such-revision is not a commit" if shutil.which("git")
     else "check-fresh: git is not installed"),
])
def test_check_fresh_bad_invocations(args, message):
    r = subprocess.run(["bash", str(REPO / "scripts" / "check-fresh"), *args], capture_output=True,
                       text=True, timeout=60, stdin=subprocess.DEVNULL)
    assert r.returncode != 0 and "Traceback" not in r.stderr
    assert r.stderr.splitlines()[0].startswith(message), r.stderr
