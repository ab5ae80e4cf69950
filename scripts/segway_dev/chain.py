"""The QEMU device's chain of trust: BL1 → BL2 → BL31 + OP-TEE → U-Boot → Linux.

TF-A's BL1 runs from QEMU's secure flash, which holds BL1 and, at ``FIP_OFFSET``, the FIP that
segway-sign made (generic TBBR certificates under the ROT key in the token). BL2 authenticates
BL31, OP-TEE (BL32) and U-Boot (BL33); U-Boot carries the FIT key in its appended control device
tree and boots only the signed FIT that QEMU's loader put at ``FIT_ADDR``. TF-A, U-Boot and Linux
print on the first UART, OP-TEE on the second: each refusal is read from the stage that refuses.

The kernel's device tree is the one TF-A (PSCI) and OP-TEE (``/firmware/optee``, its shared
memory) completed at run time: :func:`capture_runtime_dtb` reads it out of guest memory once per
firmware, and it then travels inside the signed FIT.
"""

from __future__ import annotations

import dataclasses
import re
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Sequence

import libfdt

from . import procs
from .bootmedia import USERSPACE_MARKER
from .fitbuild import FIT_ADDR

QEMU = "qemu-system-aarch64"
# GICv3 (OP-TEE's build), Cortex-A57 (with -cpu max the first TA load ends in an EL3 exception).
MACHINE_ARGS = ["-machine", "virt,secure=on,virtualization=off,gic-version=3", "-cpu", "cortex-a57",
                "-smp", "2", "-m", "1024"]
FIP_OFFSET = 0x40000  # PLAT_QEMU_FIP_BASE - flash base in TF-A's plat/qemu
FLASH_SIZE = 64 << 20  # QEMU virt's secure flash bank
# OP-TEE's shared memory sits at 0x42000000 (2 MiB): the kernel goes above it.
KERNEL_LOAD = 0x42200000
RUNTIME_DTB_ADDR = 0x40000000  # where QEMU put the tree TF-A and OP-TEE completed
RUNTIME_DTB_MAX = 1 << 20
# Per-boot randomness QEMU adds to the chosen nodes: never freeze it into a signed tree.
_VOLATILE = {"/chosen": ("kaslr-seed", "rng-seed"), "/secure-chosen": ("kaslr-seed", "rng-seed")}

BOOT_TIMEOUT = 600.0

# What each stage prints on success, in boot order (UART0 unless noted).
STAGES = [
    ("BL1", re.compile(r"NOTICE:  BL1: v\d")),
    ("BL2", re.compile(r"NOTICE:  BL2: v\d")),
    ("BL31", re.compile(r"NOTICE:  BL31: v\d")),
    ("OP-TEE", re.compile(r"Primary CPU switching to normal world boot")),  # UART1
    ("U-Boot", re.compile(r"^U-Boot \d{4}\.\d{2}", re.M)),
    ("FIT", re.compile(r"Verifying Hash Integrity \.\.\. \S+,\S+:\S+\+ OK")),
    ("Linux", re.compile(r"Booting Linux on physical CPU")),
    ("userspace", re.compile(r"^" + re.escape(USERSPACE_MARKER) + r"\s*$", re.M)),
]
# Refusals, by the stage that prints them.
REFUSALS = [
    ("BL1", re.compile(r"ERROR:\s+Failed to load BL2 firmware\.?")),
    ("BL2", re.compile(r"ERROR:\s+BL2: Failed to load image id \d+ \(-?\d+\)")),
    ("U-Boot", re.compile(
        r"Bad Data Hash|Failed to verify required signature '[^']*'|Verification failed|"
        r"ERROR: can't get kernel image!?|Bad FIT kernel image format!?|Wrong Image Format for bootm command|"
        r"Could not find configuration node|\S+:\S+-\s+error!")),
    ("Linux", re.compile(r"device-mapper: verity: \S+: data block \d+ is corrupted|Kernel panic - not syncing[^\n]*")),
]
# Once one of these appears the boot will not go further.
_FINAL = re.compile(r"Failed to load BL2 firmware|BL2: Failed to load image id|resetting \.\.\.|"
                    r"Kernel panic - not syncing|reboot: Power down|reboot: System halted|"
                    + re.escape(USERSPACE_MARKER))


_OPTEE_PANIC = re.compile(r"Panic at \S+")


class ChainError(RuntimeError):
    """The flash image could not be assembled or QEMU could not run it."""


def flash_image(bl1: Path, fip: bytes) -> bytes:
    """QEMU's secure flash: BL1 at 0, the FIP at FIP_OFFSET, padded to the bank's size (as TF-A's
    own ``qemu_fw.bios`` rule builds it)."""
    bl1_data = Path(bl1).read_bytes()
    if len(bl1_data) > FIP_OFFSET:
        raise ChainError(f"BL1 is {len(bl1_data)} bytes, more than the {FIP_OFFSET:#x} before the FIP")
    if FIP_OFFSET + len(fip) > FLASH_SIZE:
        raise ChainError(f"the FIP ({len(fip)} bytes) does not fit in the {FLASH_SIZE >> 20} MiB flash")
    image = bytearray(FLASH_SIZE)
    image[: len(bl1_data)] = bl1_data
    image[FIP_OFFSET: FIP_OFFSET + len(fip)] = fip
    return bytes(image)


@dataclasses.dataclass
class ChainResult:
    uart0: str  # TF-A, U-Boot, Linux
    uart1: str  # OP-TEE
    timed_out: bool
    log_dir: Path

    def reached(self) -> list[str]:
        return [name for name, pat in STAGES
                if pat.search(self.uart1 if name == "OP-TEE" else self.uart0)]

    def refusals(self) -> list[tuple[str, str]]:
        """(stage, console line) for every refusal printed."""
        found = []
        for stage, pat in REFUSALS:
            for m in pat.finditer(self.uart0):
                found.append((stage, m.group(0).strip()))
        return found

    def refused_by(self) -> str | None:
        refusals = self.refusals()
        return refusals[0][0] if refusals else None

    @property
    def booted(self) -> bool:
        return "userspace" in self.reached() and not self.refusals()

    def summary(self) -> str:
        return (f"reached {', '.join(self.reached()) or 'nothing'}; refusals {self.refusals()[:3]}; "
                f"timed_out={self.timed_out}; logs in {self.log_dir}")


def _qemu_argv(flash: Path, uart0: Path, uart1: Path, fit: Path | None, monitor: Path | None,
               extra: Sequence[str]) -> list[str]:
    argv = [QEMU, *MACHINE_ARGS, "-bios", str(flash), "-display", "none", "-nic", "none",
            "-no-reboot", "-serial", f"file:{uart0}", "-serial", f"file:{uart1}"]
    if monitor is not None:
        # A reset stops the guest instead of ending QEMU, so its memory can still be read.
        argv += ["-monitor", f"unix:{monitor},server=on,wait=off", "-action", "shutdown=pause"]
    else:
        argv += ["-monitor", "none"]
    if fit is not None:
        argv += ["-device", f"loader,file={fit},addr={FIT_ADDR:#x},force-raw=on"]
    return argv + list(extra)


def _read(path: Path) -> str:
    try:
        return path.read_bytes().decode("utf-8", errors="replace").replace("\r", "")
    except FileNotFoundError:
        return ""


def boot(flash: Path, log_dir: Path, *, fit: Path | None = None, timeout: float = BOOT_TIMEOUT,
         extra_args: Sequence[str] = (), until: re.Pattern = _FINAL, settle: float = 1.0) -> ChainResult:
    """Boot the flash image (and a FIT) until a final line (refusal, reset, userspace marker,
    panic) or ``timeout``; QEMU is stopped by PID."""
    log_dir = Path(log_dir)
    log_dir.mkdir(parents=True, exist_ok=True)
    uart0, uart1 = log_dir / "uart0.log", log_dir / "uart1.log"
    for path in (uart0, uart1):
        path.unlink(missing_ok=True)
    for path in (flash, fit):
        if path is not None and not Path(path).is_file():
            raise ChainError(f"missing file: {path}")
    argv = _qemu_argv(Path(flash), uart0, uart1, fit, None, extra_args)
    try:
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                stderr=subprocess.PIPE, start_new_session=True)
    except FileNotFoundError:
        raise ChainError(f"{QEMU} is not installed (apt: qemu-system-arm)") from None
    deadline = time.monotonic() + timeout
    timed_out = False
    try:
        while proc.poll() is None:
            if until.search(_read(uart0)) or _OPTEE_PANIC.search(_read(uart1)):
                time.sleep(settle)  # let the stage finish its lines
                break
            if time.monotonic() > deadline:
                timed_out = True
                break
            time.sleep(0.2)
    finally:
        procs.stop(proc, 5)
    stderr = proc.stderr.read().decode(errors="replace").strip() if proc.stderr else ""
    if proc.stderr:
        proc.stderr.close()
    if proc.returncode not in (0, -15, -9) and not _read(uart0):
        raise ChainError(f"{QEMU} failed: {stderr.splitlines()[-1] if stderr else proc.returncode}")
    return ChainResult(_read(uart0), _read(uart1), timed_out, log_dir)


def _monitor(sock_path: Path, commands: Sequence[str], timeout: float = 30.0) -> str:
    """Send HMP commands to QEMU's monitor socket; return what it answered."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.connect(str(sock_path))
            break
        except OSError:
            sock.close()
            if time.monotonic() > deadline:
                raise ChainError("QEMU's monitor socket did not open") from None
            time.sleep(0.1)
    out = b""

    def read_prompt(prompts: int) -> None:
        # Each command is answered with its output and a new "(qemu)" prompt: wait for it, so no
        # command is lost when the connection closes.
        nonlocal out
        end = time.monotonic() + timeout
        while out.count(b"(qemu)") < prompts and time.monotonic() < end:
            try:
                chunk = sock.recv(65536)
            except socket.timeout:
                continue
            if not chunk:
                break
            out += chunk
        if out.count(b"(qemu)") < prompts:
            raise ChainError(f"QEMU's monitor did not answer {commands!r}")

    with sock:
        sock.settimeout(1.0)
        read_prompt(1)  # the banner
        for n, cmd in enumerate(commands, start=2):
            sock.sendall(cmd.encode() + b"\n")
            read_prompt(n)
    return out.decode(errors="replace")


def capture_runtime_dtb(flash: Path, log_dir: Path, timeout: float = 300.0) -> bytes:
    """The device tree TF-A and OP-TEE hand to the normal world, read out of guest memory once
    U-Boot has started (no FIT is loaded, so it resets and the guest pauses)."""
    log_dir = Path(log_dir)
    log_dir.mkdir(parents=True, exist_ok=True)
    uart0, uart1 = log_dir / "uart0.log", log_dir / "uart1.log"
    with tempfile.TemporaryDirectory(prefix="segway-chain-") as tmp:
        mon = Path(tmp) / "monitor.sock"
        dump = Path(tmp) / "ram.bin"
        argv = _qemu_argv(Path(flash), uart0, uart1, None, mon, ())
        try:
            proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                    stderr=subprocess.DEVNULL, start_new_session=True)
        except FileNotFoundError:
            raise ChainError(f"{QEMU} is not installed (apt: qemu-system-arm)") from None
        try:
            deadline = time.monotonic() + timeout
            while "resetting ..." not in _read(uart0):
                if proc.poll() is not None or time.monotonic() > deadline or _refused(uart0):
                    raise ChainError(f"the firmware did not reach U-Boot ({_read(uart0)[-200:]!r}); "
                                     f"log: {uart0}")
                time.sleep(0.2)
            _monitor(mon, ["stop", f'pmemsave {RUNTIME_DTB_ADDR:#x} {RUNTIME_DTB_MAX:#x} "{dump}"'])
            if not (dump.is_file() and dump.stat().st_size == RUNTIME_DTB_MAX):
                raise ChainError("QEMU did not save the guest memory holding the device tree")
            ram = dump.read_bytes()
        finally:
            procs.stop(proc, 5)
    if ram[:4] != b"\xd0\x0d\xfe\xed":
        raise ChainError(f"no device tree at {RUNTIME_DTB_ADDR:#x} after the firmware ran")
    size = int.from_bytes(ram[4:8], "big")
    if not 0x40 <= size <= RUNTIME_DTB_MAX:
        raise ChainError(f"the run-time device tree claims {size} bytes")
    fdt = libfdt.Fdt(bytearray(ram[:size]))
    _drop_volatile(fdt)
    fdt.pack()
    return bytes(fdt.as_bytearray())


def _refused(uart0: Path) -> bool:
    text = _read(uart0)
    return any(pat.search(text) for stage, pat in REFUSALS if stage in ("BL1", "BL2"))


def _drop_volatile(fdt: libfdt.Fdt) -> None:
    for path, props in _VOLATILE.items():
        node = fdt.path_offset(path, [libfdt.NOTFOUND])
        for prop in props if node >= 0 else ():
            fdt.delprop(node, prop, [libfdt.NOTFOUND])


def kernel_dtb(runtime_dtb: bytes, bootargs: str) -> bytes:
    """The kernel's tree for the FIT: the run-time tree with the command line in /chosen (signed
    with the FIT, since U-Boot here reads no environment)."""
    fdt = libfdt.Fdt(bytearray(runtime_dtb))
    fdt.resize(len(runtime_dtb) + len(bootargs) + 256)
    chosen = fdt.path_offset("/chosen", [libfdt.NOTFOUND])
    if chosen < 0:
        chosen = fdt.add_subnode(0, "chosen")
    fdt.setprop_str(chosen, "bootargs", bootargs)
    fdt.pack()
    return bytes(fdt.as_bytearray())
