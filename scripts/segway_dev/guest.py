"""The running QEMU device: the signed chain booting the runtime root, reached over SSH.

QEMU runs the device (flash, signed FIT, the verity root read-only, a writable data disk) with user
networking restricted to the host's loopback: SSH and the KMS's mTLS port are forwarded to
127.0.0.1 on the host, and the guest reaches the host's swtpm (its TPM here) at
``guest_system.TPM_HOST`` through two ``guestfwd`` rules. Nothing else leaves the guest.
"""

from __future__ import annotations

import contextlib
import os
import shlex
import socket
import subprocess
import sys
import time
from pathlib import Path

from . import chain, guest_system, procs
from .device import Device
from .host_tpm import HostTpm

SSH_OPTIONS = ["-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null", "-o", "BatchMode=yes",
               "-o", "LogLevel=ERROR", "-o", "ConnectTimeout=10", "-o", "ServerAliveInterval=15"]
BOOT_TIMEOUT = 900.0  # QEMU start to SSH (TCG on 2 shared cores: systemd, Python start-ups)


class GuestError(RuntimeError):
    """The guest did not come up, or stopped answering."""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Guest:
    """One boot of the device. ``start`` boots it to SSH; ``run`` runs a shell command as root and
    returns ``(status, output)`` as oeqa's SSH target does; ``stop`` powers it off (or stops QEMU by
    PID)."""

    def __init__(self, device: Device, data_disk: Path, ssh_key: Path, tpm: HostTpm, log_dir: Path):
        self.device, self.data_disk, self.ssh_key, self.tpm = device, Path(data_disk), Path(ssh_key), tpm
        self.log_dir = Path(log_dir)
        self.ssh_port = _free_port()
        self.kms_port = _free_port()
        self.proc: subprocess.Popen | None = None
        self.boots = 0

    @property
    def uart0(self) -> Path:
        return self.log_dir / f"boot{self.boots}" / "uart0.log"

    def qemu_argv(self) -> list[str]:
        fwd = [f"guestfwd=tcp:{guest_system.TPM_HOST}:{guest_system.TPM_PORT + i}-cmd:"
               f"socat - TCP:127.0.0.1:{self.tpm.port + i}" for i in (0, 1)]
        netdev = ",".join(["user", "id=n0", "restrict=on",
                           f"hostfwd=tcp:127.0.0.1:{self.ssh_port}-:22",
                           f"hostfwd=tcp:127.0.0.1:{self.kms_port}-:{guest_system.KMS_TCP_PORT}", *fwd])
        extra = [*self.device.qemu_args(),
                 "-drive", f"if=virtio,format=raw,file={self.data_disk}",
                 "-netdev", netdev, "-device", "virtio-net-pci,netdev=n0,romfile="]
        logs = self.uart0.parent
        return chain._qemu_argv(self.device.flash, logs / "uart0.log", logs / "uart1.log", self.device.fit,
                                None, extra)

    def start(self, timeout: float = BOOT_TIMEOUT) -> "Guest":
        self.boots += 1
        self.uart0.parent.mkdir(parents=True, exist_ok=True)
        self.proc = subprocess.Popen(self.qemu_argv(), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                     stderr=(self.uart0.parent / "qemu.stderr").open("wb"), start_new_session=True)
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise GuestError(f"QEMU ended during boot ({self.proc.returncode}); log: {self.uart0}")
            text = self.uart0.read_text(errors="replace") if self.uart0.is_file() else ""
            for stage, pat in chain.REFUSALS:
                if pat.search(text):
                    self.kill()
                    raise GuestError(f"{stage} refused the boot; log: {self.uart0}")
            if "login:" in text or "Reached target" in text and "Multi-User" in text:
                status, _ = self.run("true", timeout=30, check_boot=False)
                if status == 0:
                    return self
            if time.monotonic() > deadline:
                self.kill()
                raise GuestError(f"the guest did not answer SSH within {timeout:.0f} s; log: {self.uart0}")
            time.sleep(2)

    def ssh_argv(self, command: str) -> list[str]:
        return ["ssh", *SSH_OPTIONS, "-i", str(self.ssh_key), "-p", str(self.ssh_port), "root@127.0.0.1", command]

    def run(self, command: str, timeout: float = 300, check_boot: bool = True) -> tuple[int, str]:
        """Run ``command`` as root in the guest: (exit status, stdout and stderr together)."""
        if check_boot and (self.proc is None or self.proc.poll() is not None):
            raise GuestError(f"the guest is not running; log: {self.uart0}")
        try:
            proc = subprocess.run(self.ssh_argv(command), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                  stderr=subprocess.STDOUT, timeout=timeout)
        except subprocess.TimeoutExpired:
            return 255, f"timed out after {timeout} s: {command}"
        return proc.returncode, proc.stdout.decode(errors="replace").rstrip("\n")

    def check(self, command: str, timeout: float = 300) -> str:
        status, out = self.run(command, timeout)
        if status != 0:
            raise GuestError(f"`{command}` exited {status}: {out[-800:]}")
        return out

    def copy_from(self, remote: str, local: Path, timeout: float = 120) -> Path:
        data = subprocess.run(self.ssh_argv(f"cat {shlex.quote(remote)}"), stdin=subprocess.DEVNULL,
                              capture_output=True, timeout=timeout)
        if data.returncode != 0:
            raise GuestError(f"cannot read {remote} from the guest: {data.stderr.decode(errors='replace')[-300:]}")
        Path(local).write_bytes(data.stdout)
        return Path(local)

    def copy_to(self, data: bytes, remote: str, mode: str = "0600", timeout: float = 120) -> None:
        cmd = f"umask 077; cat > {shlex.quote(remote)} && chmod {mode} {shlex.quote(remote)}"
        proc = subprocess.run(self.ssh_argv(cmd), input=data, capture_output=True, timeout=timeout)
        if proc.returncode != 0:
            raise GuestError(f"cannot write {remote} in the guest: {proc.stderr.decode(errors='replace')[-300:]}")

    def wait_kms_serving(self, polls: int = 40) -> None:
        """Wait until segway-kmsd answers its health check with SERVING (as root, admin socket)."""
        status, out = self.run(
            f"for i in $(seq {polls}); do segway-kmsctl --socket /run/segway-kms/admin.sock health 2>/dev/null "
            "| grep -qx SERVING && exit 0; sleep 3; done; systemctl status segway-kmsd --no-pager | tail -20; exit 1",
            timeout=polls * 15)
        if status != 0:
            raise GuestError(f"segway-kmsd did not serve: {out[-800:]}")

    def stop(self, timeout: float = 180) -> None:
        """Power off cleanly (data disk unmounted); QEMU exits on PSCI SYSTEM_OFF."""
        if self.proc is None or self.proc.poll() is not None:
            return
        self.run("systemctl poweroff", timeout=30)
        try:
            self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()

    def kill(self) -> None:
        if self.proc is not None:
            procs.stop(self.proc, 10)


# virtio-net (PCI) for the forwarded ports; loaded in the initramfs like the disk's modules.
NET_MODULES = ("failover", "net_failover", "virtio_net")


def build_runtime_device(out: Path, pki_dir: Path, sign, pin_args, progress=print) -> Device:
    """The signed device (the chain of device.build_device) booting the runtime root of
    guest_system.py from its verity disk."""
    from . import device

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    rootfs = guest_system.build_rootfs(out / "rootfs.ext4", progress)  # verity_root names by it
    # The root carries no kernel modules (udev cannot load any): the initramfs loads the NIC's.
    init = device.TEE_BODY + f"for m in {' '.join(NET_MODULES)}; do modprobe $m; done\n"
    return device.build_device(out, pki_dir, sign, pin_args, init_body=init, modules=("tee", "optee", *NET_MODULES),
                               verity=True, rootfs=rootfs, progress=progress)


@contextlib.contextmanager
def running(work: Path, progress=print):
    """Build (or reuse) a development token, the runtime device, an SSH key and the data disk under
    ``work``, boot the device with its swtpm, and yield the running :class:`Guest`; power off after."""
    work = Path(work).resolve()
    work.mkdir(parents=True, exist_ok=True)
    segway_sign = Path(sys.executable).with_name("segway-sign")
    env = dict(os.environ, SEGWAY_DEV_HSM_DIR=str(work / "hsm"))
    pin = ["--pin-file", str(work / "hsm" / "user.pin")]

    def sign(*args) -> str:
        proc = subprocess.run([str(segway_sign), *map(str, args)], env=env, capture_output=True, text=True)
        if proc.returncode != 0:
            raise GuestError(f"segway-sign {' '.join(map(str, args[:2]))}: {proc.stderr.strip()}")
        return proc.stdout

    if not (work / "pki" / "ceremony.json").is_file():
        progress("development token and ceremony (conf/pki-dev.yaml)")
        sign("token", "init-dev")
        sign("pki", "init", guest_system.REPO_ROOT / "conf" / "pki-dev.yaml", "--out", work / "pki", *pin)
    key = work / "ssh" / "id_ed25519"
    if not key.is_file():
        key.parent.mkdir(parents=True, exist_ok=True)
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
    dev = build_runtime_device(work / "device", work / "pki", sign, pin, progress)
    data = work / "data.img"
    if not data.is_file():
        guest_system.make_data_disk(data, key.with_suffix(".pub").read_text())
    tpm = HostTpm(work / "tpm").start()
    vm = Guest(dev, data, key, tpm, work / "logs")
    try:
        progress("booting: BL1 → BL2 → BL31 + OP-TEE → U-Boot → Linux → systemd (minutes under TCG)")
        vm.start()
        yield vm
    finally:
        vm.stop()
        tpm.stop()


def session(work: Path, commands: list[str], progress=print) -> int:
    """Boot the device (:func:`running`) and run ``commands`` in it as root, echoing each with its
    output; with no commands, stay up until interrupted and say how to reach it. Returns the last
    command's status."""
    status = 0
    with running(work, progress) as vm:
        if not commands:
            print(f"up: ssh -i {vm.ssh_key} -p {vm.ssh_port} root@127.0.0.1 (KMS mTLS on "
                  f"127.0.0.1:{vm.kms_port}); Ctrl-C powers it off", flush=True)
            try:
                vm.proc.wait()
            except KeyboardInterrupt:
                pass
        for command in commands:
            print(f"root@segway-qemu:~# {command}", flush=True)
            status, out = vm.run(command)
            if out:
                print(out, flush=True)
    return status


def provision_script(label: str = guest_system.TOKEN_LABEL, slot_index: int = 0,
                     pin_file: str = guest_system.TOKEN_PIN_FILE, owner: str = "segway-kms") -> str:
    """Shell for the guest: initialise a token of OP-TEE's PKCS#11 TA as first boot would, with
    random SO and user PINs passed in the environment only (pkcs11-tool's ``env:`` form, never argv),
    the user PIN kept in ``pin_file`` (0400, ``owner``)."""
    return f"""set -e
umask 077
so=$(od -An -N16 -tx1 /dev/urandom | tr -d ' \\n'); pin=$(od -An -N16 -tx1 /dev/urandom | tr -d ' \\n')
export SEGWAY_SO_PIN=$so SEGWAY_USER_PIN=$pin
m={guest_system.LIBCKTEEC}
pkcs11-tool --module $m --slot-index {slot_index} --init-token --label {label} --so-pin env:SEGWAY_SO_PIN
pkcs11-tool --module $m --token-label {label} --login --login-type so --so-pin env:SEGWAY_SO_PIN \\
    --init-pin --new-pin env:SEGWAY_USER_PIN
mkdir -p "$(dirname {pin_file})"
printf %s "$pin" > {pin_file}
chown {owner}:{owner} {pin_file}
chmod 0400 {pin_file}
"""
