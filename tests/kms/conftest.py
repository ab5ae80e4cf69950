"""Real components for the segway-kms tests: swtpm, SoftHSM tokens and the daemon itself, each started in
a temporary directory and stopped by PID."""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import grpc
import pytest
# scripts.segway_dev: importable from the repository root both under pytest and with python -m benchmarks.kms
from scripts.segway_dev.host_tpm import HostTpm, free_port_pair  # noqa: F401  (free_port_pair: for the tests)
from segway_sign.hsm.devhsm import init_token
import yaml

from segway_kms.api import kms_pb2 as pb
from segway_kms.api import kms_pb2_grpc

SOFTHSM_MODULE = "/usr/lib/softhsm/libsofthsm2.so"
USER_PIN = "2222"

# Unix-socket groups used as principals: one socket per group, each with its own role set.
GROUP_ROLES = {
    "root": {"*": "admin"},
    "daemon": {"acme": "operator", "ca": "operator"},
    "bin": {"acme": "user"},
    "sys": {"other": "admin"},
    "adm": None,  # a socket whose group has no principal entry at all
}
PROFILES = {
    "user": {"ekus": ["clientAuth", "emailProtection"], "san_patterns": [r"[a-z0-9.]+@acme\.example", r"[a-z0-9.]+"],
             "max_days": 365, "key_types": ["EC_P256", "EC_P384", "RSA_2048", "RSA_3072"]},
    "server": {"ekus": ["serverAuth"], "san_patterns": [r"[a-z0-9-]+\.acme\.example"], "max_days": 90,
               "key_types": ["EC_P256", "RSA_2048"]},
}


def wait_for(predicate, timeout=30.0, what="condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    raise TimeoutError(f"timed out waiting for {what}")


class Swtpm(HostTpm):
    """The harness's swtpm (segway_dev.host_tpm), started at once; ``stop`` kills it, as a TPM that is lost."""

    def __init__(self, state: Path, ek_cert: bool = False):
        super().__init__(state, ek_cert=ek_cert)
        self.ek_ca_bundle = self.ek_chain
        self.start()

    @property
    def tcti(self) -> str:
        return f"swtpm:host=127.0.0.1,port={self.port}"

    def stop(self):
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(timeout=10)


class SoftHsm:
    def __init__(self, root: Path, label: str = "kms"):
        self.root = root
        tokens = root / "tokens"
        tokens.mkdir(parents=True)
        self.conf = root / "softhsm2.conf"
        self.conf.write_text(f"directories.tokendir = {tokens}\nobjectstore.backend = file\nlog.level = ERROR\n")
        self.env = dict(os.environ, SOFTHSM2_CONF=str(self.conf))
        # PINs go to softhsm2-util on a pty, never on its command line.
        init_token(self.conf, label, "1111", USER_PIN)
        self.label = label
        self.pin_file = root / "pin"
        self.pin_file.write_text(USER_PIN + "\n")
        self.pin_file.chmod(0o600)


@pytest.fixture
def swtpm(tmp_path):
    tpm = Swtpm(tmp_path / "swtpm")
    yield tpm
    tpm.stop()


@pytest.fixture
def softhsm(tmp_path, monkeypatch):
    hsm = SoftHsm(tmp_path / "softhsm")
    monkeypatch.setenv("SOFTHSM2_CONF", str(hsm.conf))
    return hsm


class Daemon:
    """segway-kmsd in a subprocess, one Unix socket per group in GROUP_ROLES, optional mTLS listener."""

    def __init__(self, root: Path, backend: dict, env: dict | None = None, tcp: bool = False, profile="development",
                 extra: dict | None = None):
        self.root = root
        root.mkdir(parents=True, exist_ok=True)
        self.state = root / "state"
        self.sockets = {g: root / "run" / f"{g}.sock" for g in GROUP_ROLES}
        cfg = {
            "profile": profile, "state_dir": str(self.state), "backend": backend,
            "listen": {"unix": [{"path": str(p), "group": g, "mode": "660"} for g, p in self.sockets.items()]},
            "principals": {f"group:{g}": roles for g, roles in GROUP_ROLES.items() if roles is not None},
            "cert_profiles": PROFILES, "max_request_bytes": 65536, "workers": 40,
        }
        cfg["principals"].update({"alice@acme.example": {"acme": "user"}, "bob@acme.example": {"acme": "user"}})
        if tcp:
            cfg["listen"]["tcp"] = {"address": "127.0.0.1:0", "server_name": "kms.local"}
        if extra:
            cfg.update(extra)
        self.config = root / "segway-kms.yaml"
        self.config.write_text(yaml.safe_dump(cfg))
        self.env = dict(env or os.environ)
        self.log = root / "kmsd.log"
        self.proc = None

    def start(self, expect_ready=True):
        (self.root / "run").mkdir(exist_ok=True)
        for p in self.sockets.values():
            if p.exists():
                p.unlink()
        self._logf = open(self.log, "ab")
        self.proc = subprocess.Popen([sys.executable, "-m", "segway_kms.server.daemon", "-c", str(self.config)],
                                     stdout=self._logf, stderr=subprocess.STDOUT, env=self.env)
        if expect_ready:
            wait_for(self._serving, timeout=60, what=f"segway-kmsd (log: {self.log.read_text()[-2000:]})")
        return self

    def _serving(self) -> bool:
        if self.proc.poll() is not None:
            raise RuntimeError(f"segway-kmsd exited with {self.proc.returncode}: {self.log.read_text()[-3000:]}")
        if not all(p.exists() for p in self.sockets.values()):
            return False
        from grpc_health.v1 import health_pb2, health_pb2_grpc
        try:
            with grpc.insecure_channel(f"unix:{self.sockets['root']}") as ch:
                r = health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(service="segway.kms.v1.Kms"),
                                                         timeout=2)
            return r.status == health_pb2.HealthCheckResponse.SERVING
        except grpc.RpcError:
            return False

    def stub(self, group="root") -> kms_pb2_grpc.KmsStub:
        ch = grpc.insecure_channel(f"unix:{self.sockets[group]}",
                                   options=[("grpc.max_send_message_length", 8 * 1024 * 1024)])
        return kms_pb2_grpc.KmsStub(ch)

    def kill(self, sig=signal.SIGKILL):
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(sig)
            self.proc.wait(timeout=30)
        if getattr(self, "_logf", None):
            self._logf.close()

    def ctl(self, *args, group="root", check=True, input=None):
        cmd = [sys.executable, "-c", "from segway_kms.cli.main import run; run()", "--socket",
               str(self.sockets[group]), *map(str, args)]
        r = subprocess.run(cmd, capture_output=True, timeout=120, env=self.env, input=input)
        if check and r.returncode != 0:
            raise AssertionError(f"segway-kmsctl {' '.join(map(str, args))} failed: {r.stderr.decode()}")
        return r


def tpm_backend(tpm: Swtpm) -> dict:
    return {"type": "tpm", "tcti": tpm.tcti}


def pkcs11_backend(hsm: SoftHsm) -> dict:
    return {"type": "pkcs11", "module": SOFTHSM_MODULE, "token_label": hsm.label, "pin_file": str(hsm.pin_file)}


@pytest.fixture
def tpm_daemon(tmp_path):
    """A running daemon on swtpm with the CA initialised and the mTLS listener up."""
    yield from _daemon_with_ca(tmp_path, "tpm")


@pytest.fixture
def ek_daemon(tmp_path):
    """A running daemon on an swtpm that carries an EK certificate (no CA)."""
    tpm = Swtpm(tmp_path / "swtpm", ek_cert=True)
    daemon = Daemon(tmp_path / "kms", tpm_backend(tpm))
    daemon.swtpm = tpm
    try:
        yield daemon.start()
    finally:
        daemon.kill(signal.SIGTERM)
        tpm.stop()


@pytest.fixture(params=["tpm", "pkcs11"])
def backend_daemon(request, tmp_path):
    """A running daemon on each hardware backend (swtpm or SoftHSM), with the CA initialised."""
    yield from _daemon_with_ca(tmp_path, request.param)


def _daemon_with_ca(tmp_path, backend: str):
    """Start the daemon on ``backend``, initialise its CA, wait for mTLS; stop everything after."""
    if backend == "tpm":
        tpm = Swtpm(tmp_path / "swtpm")
        daemon = Daemon(tmp_path / "kms", tpm_backend(tpm), tcp=True)
        daemon.swtpm = tpm
        cleanup = tpm.stop
    else:
        hsm = SoftHsm(tmp_path / "softhsm")
        daemon = Daemon(tmp_path / "kms", pkcs11_backend(hsm), env=hsm.env, tcp=True)
        cleanup = lambda: None  # noqa: E731
    daemon.backend_name = backend
    try:
        daemon.start()
        daemon.stub().InitCa(pb.InitCaRequest(common_name="Segway Test CA", algorithm=pb.EC_P256, validity_days=365))
        wait_for(lambda: (daemon.state / "tcp.port").exists(), what="mTLS listener")
        yield daemon
    finally:
        daemon.kill(signal.SIGTERM)
        cleanup()


def require_tools(*tools):
    missing = [t for t in tools if shutil.which(t) is None]
    if missing:
        pytest.fail(f"missing tools: {', '.join(missing)} (run scripts/bootstrap)")
