"""A throw-away systemd machine for unit tests: systemd-nspawn boots this host's own root file system
through a tmpfs overlay (--volatile=overlay), so the container has the installed systemd and the
project's virtualenv, and every write it makes vanishes with it.

nspawn refuses to boot "/" itself, so a private mount namespace gets a plain bind of "/" to boot from.
No host systemd is needed: --register=no and --keep-unit keep nspawn away from machined and the bus.
Commands run inside through nsenter(1) into the container's init (stdin closed: a process left waiting
for the terminal would keep the container's shutdown waiting for it)."""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

NSPAWN = "systemd-nspawn"
REPO = Path(__file__).resolve().parents[3]  # the project checkout, where .venv lives


def unavailable_reason() -> str | None:
    """Why this host cannot boot a container, or None when it can."""
    if os.geteuid() != 0:
        return "systemd-nspawn needs root"
    for tool in (NSPAWN, "nsenter", "unshare"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed (apt: systemd-container, util-linux; see scripts/apt-packages.txt)"
    if not Path("/usr/lib/systemd/systemd").exists() and not Path("/lib/systemd/systemd").exists():
        return "systemd is not installed on this host"
    probe = subprocess.run(["unshare", "--mount", "--propagation", "private", "true"], capture_output=True, timeout=30)
    if probe.returncode != 0:
        return f"cannot create a mount namespace here (no CAP_SYS_ADMIN?): {probe.stderr.decode().strip()}"
    return None


class Machine:
    """One booted container; ``leader`` is its PID 1 as seen from the host."""

    def __init__(self, workdir: Path, name: str, target: str = "basic.target"):
        self.workdir = workdir
        self.name = name
        self.target = target
        self.rootdir = workdir / "root"
        self.log = workdir / "nspawn.log"
        self.proc: subprocess.Popen | None = None
        self.leader: int | None = None

    def start(self, timeout: float = 90.0) -> "Machine":
        self.rootdir.mkdir(parents=True, exist_ok=True)
        nspawn = [NSPAWN, "--directory", str(self.rootdir), "--volatile=overlay", "--register=no", "--keep-unit",
                  "--link-journal=no", f"--machine={self.name}", "--console=pipe",
                  # nspawn puts a fresh tmpfs on /tmp: a checkout (and its .venv) under /tmp would vanish
                  f"--bind-ro={REPO}", "--boot",
                  # booting only to basic.target keeps the host's enabled services (databases, sshd) out
                  "--", f"--unit={self.target}"]
        # `unshare` and `sh` exec into nspawn, so self.proc.pid is nspawn's PID
        script = 'mount --bind / "$1" && shift && exec "$@"'
        with open(self.log, "wb") as log:
            self.proc = subprocess.Popen(["unshare", "--mount", "--propagation", "private", "sh", "-c", script, "sh",
                                          str(self.rootdir), *nspawn], stdin=subprocess.DEVNULL, stdout=log,
                                         stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while self.leader is None:
            self._check_alive()
            children = Path(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children")
            try:
                pids = children.read_text().split()
            except OSError:
                pids = []
            for pid in pids:
                try:
                    if Path(f"/proc/{pid}/comm").read_text().strip() == "systemd":
                        self.leader = int(pid)
                except OSError:
                    pass
            if time.monotonic() > deadline:
                raise TimeoutError(f"no container init after {timeout} s: {self.log.read_text()[-2000:]}")
            time.sleep(0.1)
        state = ""
        while state not in ("running", "degraded"):
            # "offline" until the manager listens, "starting" until the target is reached
            state = self.run("systemctl", "is-system-running", check=False, timeout=30).stdout.strip()
            if state in ("maintenance", "stopping") or time.monotonic() > deadline:
                raise RuntimeError(f"container did not boot (state {state!r}): {self.log.read_text()[-2000:]}")
            time.sleep(0.1)
        return self

    def _check_alive(self) -> None:
        if self.proc.poll() is not None:
            raise RuntimeError(f"systemd-nspawn exited with {self.proc.returncode}: {self.log.read_text()[-2000:]}")

    def run(self, *cmd: str, check: bool = True, timeout: float = 60.0,
            env: dict | None = None) -> subprocess.CompletedProcess:
        """Run ``cmd`` as root inside the container."""
        self._check_alive()
        enter = ["nsenter", "--target", str(self.leader), "--all"]
        full_env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "SYSTEMD_PAGER": "", "SYSTEMD_COLORS": "0",
                    "LANG": "C.UTF-8", **(env or {})}
        r = subprocess.run([*enter, *cmd], stdin=subprocess.DEVNULL, capture_output=True, text=True,
                           timeout=timeout, env=full_env)
        if check and r.returncode != 0:
            raise AssertionError(f"{' '.join(cmd)} failed ({r.returncode}): {r.stdout}{r.stderr}")
        return r

    def path(self, inside: str) -> Path:
        """A path inside the container, reachable from the host through the init's root."""
        return Path(f"/proc/{self.leader}/root") / inside.lstrip("/")

    def stop(self, timeout: float = 60.0) -> None:
        """Power the container off (nspawn turns SIGTERM into a clean shutdown); SIGKILL its init after
        ``timeout``."""
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            # killing the PID namespace's init takes every process of the container with it
            if self.leader is not None:
                try:
                    os.kill(self.leader, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            self.proc.wait(timeout=30)
