"""The device's TPM for the QEMU guest: swtpm on the host's loopback, with an EK certificate.

The fTPM cannot be built here and Debian's arm64 kernels have no MMIO TPM driver, so the guest
reaches this swtpm through tpm2-tss's ``swtpm`` TCTI over QEMU's ``guestfwd`` (command port and
control port next to it). The EK certificate is signed by a private ``swtpm_localca`` whose
root and intermediate are the EK chain an attestation verifier trusts.
"""

from __future__ import annotations

import socket
import subprocess
import time
from pathlib import Path

from . import procs


class HostTpmError(RuntimeError):
    """swtpm could not be provisioned or started."""


def free_port_pair() -> int:
    """Two consecutive free loopback ports (swtpm's server and control channel)."""
    for _ in range(50):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if port >= 65535:
            continue
        try:
            with socket.socket() as s2:
                s2.bind(("127.0.0.1", port + 1))
            return port
        except OSError:
            continue
    raise HostTpmError("no two consecutive free loopback ports")


def port_open(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.2):
            return True
    except OSError:
        return False


class HostTpm:
    """swtpm with its state in ``state`` (kept across restarts: a guest reboot keeps its TPM)."""

    def __init__(self, state: Path, ek_cert: bool = True):
        self.state = Path(state)
        self.ek_chain: bytes | None = None
        ca = self.state.parent / f"{self.state.name}-localca"
        self.state.mkdir(parents=True, exist_ok=True)
        # Without an EK certificate a fresh swtpm manufactures itself at its first start.
        if ek_cert and not (self.state / "tpm2-00.permall").is_file():
            ca.mkdir(parents=True, exist_ok=True)
            (ca / "swtpm-localca.conf").write_text(
                f"statedir = {ca}\nsigningkey = {ca}/signkey.pem\nissuercert = {ca}/issuercert.pem\n"
                f"certserial = {ca}/certserial\n")
            (ca / "swtpm-localca.options").write_text("--platform-manufacturer segway\n")
            (ca / "swtpm_setup.conf").write_text(
                f"create_certs_tool = /usr/bin/swtpm_localca\ncreate_certs_tool_config = {ca}/swtpm-localca.conf\n"
                f"create_certs_tool_options = {ca}/swtpm-localca.options\nactive_pcr_banks = sha256\n")
            argv = ["swtpm_setup", "--tpm2", "--tpmstate", str(self.state), "--overwrite", "--create-ek-cert",
                    "--ecc", "--config", str(ca / "swtpm_setup.conf")]
            proc = subprocess.run(argv, capture_output=True, text=True, timeout=120)
            if proc.returncode != 0:
                raise HostTpmError(f"swtpm_setup failed: {proc.stderr.strip()[-300:]}")
        if (ca / "issuercert.pem").is_file():
            self.ek_chain = (ca / "issuercert.pem").read_bytes() + (ca / "swtpm-localca-rootca-cert.pem").read_bytes()
        self.port = free_port_pair()
        self.proc: subprocess.Popen | None = None

    def start(self) -> "HostTpm":
        try:
            self.proc = subprocess.Popen(
                ["swtpm", "socket", "--tpm2", "--tpmstate", f"dir={self.state}",
                 "--server", f"type=tcp,port={self.port},bindaddr=127.0.0.1",
                 "--ctrl", f"type=tcp,port={self.port + 1},bindaddr=127.0.0.1",
                 "--flags", "not-need-init,startup-clear"],
                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        except FileNotFoundError:
            raise HostTpmError("swtpm is not installed (apt: swtpm swtpm-tools)") from None
        deadline = time.monotonic() + 30
        while not port_open(self.port):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise HostTpmError("swtpm did not start")
            time.sleep(0.05)
        return self

    def stop(self) -> None:
        if self.proc is not None:
            procs.stop(self.proc, 10)
