"""Run Debian's QEMU U-Boot on a FIT and report whether it accepted or refused the signature.

The public key reaches U-Boot through its control DTB: Debian's ``qemu_arm``/``qemu_arm64`` builds
use the tree QEMU passes at the start of RAM (``CONFIG_OF_BOARD``), so ``-dtb`` with a tree that
``mkimage -K`` (or segway-sign) extended with ``/signature/key-*`` makes U-Boot enforce that key.
That tree must be dumped with exactly the options used for booting, ``-bios`` included: with
firmware the virt machine drops the PL061 GPIO, and a Linux booted with a tree that still lists it
panics.
"""

from __future__ import annotations

import dataclasses
import os
import re
import select
import subprocess
import time
from pathlib import Path
from typing import Iterable, Sequence

from . import procs
from .bootmedia import USERSPACE_MARKER
from .fitbuild import FIT_ADDR


@dataclasses.dataclass(frozen=True)
class Machine:
    qemu: str
    cpu: str
    bios: Path


MACHINES = {
    "arm64": Machine("qemu-system-aarch64", "cortex-a57", Path("/usr/lib/u-boot/qemu_arm64/u-boot.bin")),
    # The STM32MP157-class 32-bit case (Cortex-A7).
    "arm": Machine("qemu-system-arm", "cortex-a7", Path("/usr/lib/u-boot/qemu_arm/u-boot.bin")),
}
DEFAULT_MEMORY = "1G"
DEFAULT_BOOTARGS = "console=ttyAMA0 rdinit=/init panic=-1"

START_TIMEOUT = 180.0  # QEMU start to U-Boot prompt
COMMAND_TIMEOUT = 300.0  # one U-Boot command (hashing a 30 MiB FIT under TCG takes seconds)
BOOT_TIMEOUT = 600.0  # bootm to the userspace marker (~3 s here; TCG on a busy shared box is slow)

# Only the configuration-signature line has "<algo>:<key-name>" before the +/- verdict.
_VERIFIED = re.compile(r"Verifying Hash Integrity \.\.\. \S+,\S+:\S+\+ OK")
_REFUSALS = re.compile(
    r"Bad Data Hash|Failed to verify required signature|Verification failed|"
    r"ERROR: can't get kernel image|Bad FIT|Bad hash value|No hash nodes|"
    r"Failed to build hash node list|Signature checking prevents use of unit addresses|"
    r"Could not find configuration node|Can't get hash|Total size too large|"
    r"Invalid hashed-strings|Strings region is out of bounds|Unknown signature algorithm|"
    r"Wrong FIT format|Selected config not in hashed nodes|\S+:\S+-\s+error!"
)
_AUTOBOOT = re.compile(rb"Hit any key to stop autoboot")
_PROMPT = re.compile(rb"=> $")
_LINUX_DOWN = re.compile(rb"Kernel panic - not syncing|reboot: Power down|reboot: System halted")


class QemuError(RuntimeError):
    """QEMU could not be started, or U-Boot never offered its prompt."""


def _require_arch(arch: str) -> Machine:
    try:
        return MACHINES[arch]
    except KeyError:
        raise QemuError(f"unknown arch {arch!r} (expected one of {', '.join(MACHINES)})") from None


def qemu_argv(arch: str, *, memory: str = DEFAULT_MEMORY, machine_opts: str = "",
              machine_args: Sequence[str] | None = None) -> list[str]:
    """QEMU command line shared by the DTB dump and the boot (they must match).

    ``machine_args`` replaces the default machine, CPU, CPU count and RAM options, e.g. with a
    Yocto machine's runqemu options (``QB_MACHINE``, ``QB_CPU``, ``QB_SMP``, ``QB_MEM``)."""
    m = _require_arch(arch)
    if machine_args is None:
        machine = "virt" + (f",{machine_opts}" if machine_opts else "")
        machine_args = ["-M", machine, "-cpu", m.cpu, "-smp", "1", "-m", memory]
    # No NIC: nothing here boots over the network, and virt's default virtio NIC would make QEMU load
    # an iPXE option ROM (efi-virtio.rom, package ipxe-qemu). PCI devices are not in the tree, so
    # the dumped DTB is the same either way.
    return [m.qemu, *machine_args, "-nographic", "-nic", "none", "-bios", str(m.bios)]


def dump_control_dtb(arch: str, out: Path, *, memory: str = DEFAULT_MEMORY) -> Path:
    """Dump QEMU's generated device tree for ``arch`` (with ``-bios u-boot.bin``) to ``out``."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    argv = qemu_argv(arch, memory=memory, machine_opts=f"dumpdtb={tmp}")
    try:
        try:
            proc = subprocess.run(argv, capture_output=True, text=True, timeout=120,
                                  stdin=subprocess.DEVNULL)
        except FileNotFoundError:
            raise QemuError(f"{argv[0]} is not installed (apt: qemu-system-arm)") from None
        except subprocess.TimeoutExpired:
            raise QemuError(f"{argv[0]} did not dump the device tree within 120 s") from None
        if proc.returncode != 0 or not tmp.is_file():
            why = " / ".join(line.strip() for line in proc.stderr.splitlines() if line.strip())
            raise QemuError(f"{argv[0]} could not dump the device tree: {why or f'exit {proc.returncode}'}")
        os.replace(tmp, out)
    finally:
        if tmp.exists():
            tmp.unlink()
    return out


@dataclasses.dataclass
class UBootResult:
    arch: str
    log: str  # full console log (CR stripped)
    log_path: Path | None
    statuses: list[int | None]  # U-Boot's $? per command; None if it never returned (e.g. booted)
    verified: bool  # a "Verifying Hash Integrity ... <algo>:<key>+ OK" config-signature line
    refusals: list[str]  # console lines in which U-Boot refused the FIT
    userspace: bool  # the userspace marker line was printed
    timed_out: bool
    qemu_returncode: int | None  # None if QEMU had to be stopped by us

    @property
    def refused(self) -> bool:
        return bool(self.refusals) or any(s not in (None, 0) for s in self.statuses)

    @property
    def accepted(self) -> bool:
        return self.verified and not self.refused and not self.timed_out

    def summary(self) -> str:
        state = "accepted" if self.accepted else "refused" if self.refused else "undecided"
        extra = f"; refusals: {self.refusals[:3]}" if self.refusals else ""
        return (f"{self.arch}: {state} (verified={self.verified}, statuses={self.statuses}, "
                f"userspace={self.userspace}, timed_out={self.timed_out}){extra}; log: {self.log_path}")


class UBoot:
    """QEMU running Debian's U-Boot with a control DTB and a FIT preloaded at ``fit_addr``.

    Use as a context manager; QEMU runs in its own session and is always stopped by PID.
    """

    def __init__(
        self,
        arch: str,
        control_dtb: Path,
        fit: Path | None = None,
        *,
        fit_addr: int = FIT_ADDR,
        log_path: Path | None = None,
        memory: str = DEFAULT_MEMORY,
        marker: str = USERSPACE_MARKER,
        extra_args: Sequence[str] = (),
        machine_args: Sequence[str] | None = None,
    ) -> None:
        self.arch = arch
        _require_arch(arch)
        self.control_dtb = Path(control_dtb)
        self.fit = Path(fit) if fit is not None else None
        self.fit_addr = fit_addr
        if log_path is None and self.fit is not None:
            log_path = self.fit.with_name(f"{self.fit.name}.{arch}.console.log")
        self.log_path = Path(log_path) if log_path is not None else None
        self.memory = memory
        self.marker = marker
        self.extra_args = list(extra_args)
        self.machine_args = list(machine_args) if machine_args is not None else None
        self.proc: subprocess.Popen | None = None
        self._buf = bytearray()
        self._log_fh = None
        self._statuses: list[int | None] = []
        self._timed_out = False
        self._returncode: int | None = None
        self._seq = 0

    # -- process handling -----------------------------------------------------------------
    def argv(self) -> list[str]:
        argv = qemu_argv(self.arch, memory=self.memory, machine_args=self.machine_args)
        # One serial port on stdio, no monitor multiplexed into it; a guest reboot (panic=-1)
        # ends QEMU instead of looping back into U-Boot.
        argv += ["-monitor", "none", "-serial", "stdio", "-no-reboot", "-dtb", str(self.control_dtb)]
        if self.fit is not None:
            argv += ["-device", f"loader,file={self.fit},addr={self.fit_addr:#x},force-raw=on"]
        return argv + self.extra_args

    def start(self, timeout: float = START_TIMEOUT) -> None:
        """Start QEMU, interrupt autoboot and wait for U-Boot's prompt."""
        for path in (self.control_dtb, self.fit):
            if path is not None and not path.is_file():
                raise QemuError(f"missing file: {path}")
        if self.log_path is not None:
            self.log_path.parent.mkdir(parents=True, exist_ok=True)
            self._log_fh = open(self.log_path, "wb")
        try:
            self.proc = subprocess.Popen(self.argv(), stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                         stderr=subprocess.STDOUT, start_new_session=True)
        except FileNotFoundError as exc:
            raise QemuError(f"{self.argv()[0]} is not installed (apt: qemu-system-arm)") from exc
        os.set_blocking(self.proc.stdout.fileno(), False)
        deadline = time.monotonic() + timeout
        pos = self._wait_for([_AUTOBOOT, _PROMPT], 0, deadline)
        if pos is None:
            raise QemuError(f"U-Boot did not start ({self._why_not()}); log: {self.log_path}")
        if _AUTOBOOT.search(self._buf, 0):
            self._send(b"\n")
            if self._wait_for([_PROMPT], pos, deadline) is None:
                raise QemuError(f"no U-Boot prompt ({self._why_not()}); log: {self.log_path}")

    def close(self) -> None:
        if self.proc is not None:
            if self.proc.poll() is None:
                procs.stop(self.proc, 5)
            else:
                self._returncode = self.proc.returncode
            self._drain()
            for stream in (self.proc.stdin, self.proc.stdout):
                try:
                    stream.close()
                except OSError:
                    pass
        if self._log_fh is not None:
            self._log_fh.close()
            self._log_fh = None

    def __enter__(self) -> "UBoot":
        try:
            self.start()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- console ------------------------------------------------------------------------------
    def _send(self, data: bytes) -> None:
        try:
            self.proc.stdin.write(data)
            self.proc.stdin.flush()
        except BrokenPipeError as exc:
            raise QemuError(f"QEMU exited ({self._why_not()}); log: {self.log_path}") from exc

    def _drain(self) -> bool:
        """Read what QEMU printed so far; False once its output is closed."""
        while True:
            try:
                chunk = os.read(self.proc.stdout.fileno(), 65536)
            except BlockingIOError:
                return True
            except (OSError, ValueError):
                return False
            if not chunk:
                return False
            self._buf += chunk
            if self._log_fh is not None:
                self._log_fh.write(chunk)
                self._log_fh.flush()

    def _wait_for(self, patterns: Iterable[re.Pattern], start: int, deadline: float,
                  *, record_timeout: bool = True) -> int | None:
        """Wait until one pattern matches output after ``start``; return the end of the match."""
        patterns = list(patterns)
        while True:
            for pat in patterns:
                m = pat.search(self._buf, start)
                if m:
                    return m.end()
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                self._timed_out = self._timed_out or record_timeout
                return None
            ready, _, _ = select.select([self.proc.stdout], [], [], min(remaining, 1.0))
            if ready and not self._drain():
                self.proc.wait()
                self._returncode = self.proc.returncode
                # Last chance: the pattern may be in the final chunk.
                for pat in patterns:
                    m = pat.search(self._buf, start)
                    if m:
                        return m.end()
                return None

    def _why_not(self) -> str:
        if self.proc is not None and self.proc.poll() is not None:
            return f"QEMU exited with {self.proc.returncode}"
        return "timeout" if self._timed_out else "no answer"

    def command(self, cmd: str, timeout: float = COMMAND_TIMEOUT) -> int | None:
        """Run one U-Boot command and return its ``$?`` (None if it never came back)."""
        if "\n" in cmd:
            raise QemuError("U-Boot commands must be single lines")
        self._seq += 1
        tag = f"SEGWAY-STATUS-{self._seq}"
        start = len(self._buf)
        self._send(f"{cmd}; echo {tag}=$?\n".encode())
        done = re.compile(rf"{tag}=(\d+)".encode())
        end = self._wait_for([done], start, time.monotonic() + timeout)
        status = None
        if end is not None:
            status = int(done.search(self._buf, start).group(1))
            self._wait_for([_PROMPT], end, time.monotonic() + 30, record_timeout=False)
        self._statuses.append(status)
        return status

    def boot(self, cmd: str, timeout: float = BOOT_TIMEOUT) -> int | None:
        """Run a command that should start Linux; return once userspace printed the marker (and
        QEMU powered off), Linux went down, U-Boot came back with a status, or ``timeout``."""
        self._seq += 1
        tag = f"SEGWAY-STATUS-{self._seq}"
        start = len(self._buf)
        self._send(f"{cmd}; echo {tag}=$?\n".encode())
        done = re.compile(rf"{tag}=(\d+)".encode())
        marker = re.compile(rb"^" + re.escape(self.marker.encode()) + rb"\r?$", re.M)
        deadline = time.monotonic() + timeout
        end = self._wait_for([done, marker, _LINUX_DOWN], start, deadline)
        status = None
        if end is not None:
            m = done.search(self._buf, start)
            if m:
                status = int(m.group(1))
            else:
                # Linux reached userspace or went down: let QEMU finish by itself (poweroff -f,
                # or panic=-1 with -no-reboot), close() stops it otherwise.
                self._wait_exit(time.monotonic() + 60)
        self._statuses.append(status)
        return status

    def _wait_exit(self, deadline: float) -> None:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([self.proc.stdout], [], [], 0.5)
            if ready and not self._drain():
                self.proc.wait()
                self._returncode = self.proc.returncode
                return

    def run(self, commands: Sequence[str], *, boot_last: bool = False,
            timeout: float = COMMAND_TIMEOUT, boot_timeout: float = BOOT_TIMEOUT) -> "UBootResult":
        """Run ``commands`` in order (the last one with :meth:`boot` if ``boot_last``)."""
        for i, cmd in enumerate(commands):
            if self.proc.poll() is not None:
                break
            last = i == len(commands) - 1
            status = self.boot(cmd, boot_timeout) if (boot_last and last) else self.command(cmd, timeout)
            if status is None and not (boot_last and last):
                break
        return self.result()

    def result(self) -> UBootResult:
        if self.proc is not None:
            self._drain()
        log = self._buf.decode("utf-8", errors="replace").replace("\r", "")
        refusals = [line.strip() for line in log.splitlines() if _REFUSALS.search(line)]
        marker = re.compile(r"^" + re.escape(self.marker) + r"\s*$", re.M)
        return UBootResult(
            arch=self.arch,
            log=log,
            log_path=self.log_path,
            statuses=list(self._statuses),
            verified=bool(_VERIFIED.search(log)),
            refusals=refusals,
            userspace=bool(marker.search(log)),
            timed_out=self._timed_out,
            qemu_returncode=self._returncode,
        )


def check_fit(arch: str, control_dtb: Path, fit: Path, conf: str = "conf-1", *,
              fit_addr: int = FIT_ADDR, log_path: Path | None = None,
              machine_args: Sequence[str] | None = None) -> UBootResult:
    """Ask U-Boot to load and verify ``fit#conf`` without jumping into it (``bootm start``).

    ``bootm start`` runs the find-OS and find-other stages (kernel, ramdisk, fdt with their
    configuration-signature and hash checks) and returns to the prompt, so QEMU stops as soon as
    U-Boot has answered. Works for any payload, e.g. a tiny FIT on the 32-bit ``arm`` U-Boot.
    """
    with UBoot(arch, control_dtb, fit, fit_addr=fit_addr, log_path=log_path,
               machine_args=machine_args) as uboot:
        uboot.run([f"bootm start {fit_addr:#x}#{conf}"])
    return uboot.result()  # after close(): includes QEMU's last output


def boot_fit(arch: str, control_dtb: Path, fit: Path, conf: str = "conf-1", *,
             bootargs: str = DEFAULT_BOOTARGS, marker: str = USERSPACE_MARKER,
             fit_addr: int = FIT_ADDR, log_path: Path | None = None,
             timeout: float = BOOT_TIMEOUT) -> UBootResult:
    """``bootm fit#conf`` for real and wait for the userspace marker (arm64 kernel FITs)."""
    if '"' in bootargs:
        raise QemuError("bootargs must not contain double quotes")
    with UBoot(arch, control_dtb, fit, fit_addr=fit_addr, log_path=log_path, marker=marker) as uboot:
        uboot.run([f'setenv bootargs "{bootargs}"', f"bootm {fit_addr:#x}#{conf}"],
                  boot_last=True, boot_timeout=timeout)
    return uboot.result()
