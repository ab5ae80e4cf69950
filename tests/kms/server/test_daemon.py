"""The daemon process: configuration errors, release profile, systemd notify, graceful shutdown."""
from __future__ import annotations

import signal
import socket
import subprocess
import sys

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, utils

from segway_kms.api import kms_pb2 as pb

from ..conftest import Daemon, wait_for


def test_software_backend_refused_under_release(tmp_path):
    daemon = Daemon(tmp_path / "kms", {"type": "software"}, profile="release")
    daemon.start(expect_ready=False)
    assert daemon.proc.wait(timeout=60) == 2
    log = daemon.log.read_text()
    assert "refused under profile: release" in log and "Traceback" not in log


def test_bad_config_is_one_line_error(tmp_path):
    cfg = tmp_path / "bad.yaml"
    cfg.write_text("profile: production\nstate_dir: x\n")
    r = subprocess.run([sys.executable, "-m", "segway_kms.server.daemon", "-c", str(cfg)], capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 2 and r.stderr.strip().count("\n") == 0 and "profile" in r.stderr


@pytest.mark.parametrize("extra, message", [
    ({"cert_profiles": {"forever": {"max_days": 10**9}}}, "cert_profiles.forever.max_days must be 1 to 36500"),
    ({"crl_days": 0}, "crl_days must be 1 to 3650"),
])
def test_out_of_range_config_values_are_refused(tmp_path, extra, message):
    """Lifetimes that could not become certificate dates are refused at start, not at the first request."""
    daemon = Daemon(tmp_path / "kms", {"type": "software"}, extra=extra)
    daemon.start(expect_ready=False)
    assert daemon.proc.wait(timeout=60) == 2
    log = daemon.log.read_text()
    assert message in log and "Traceback" not in log
    daemon.kill()


def test_notify_ready_and_graceful_stop(tmp_path):
    notify_path = tmp_path / "notify.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(notify_path))
    sock.settimeout(60)
    import os
    daemon = Daemon(tmp_path / "kms", {"type": "software"}, env=dict(os.environ, NOTIFY_SOCKET=str(notify_path)))
    try:
        daemon.start()
        assert sock.recv(256).startswith(b"READY=1")
        assert b"segway-kmsctl" not in daemon.ctl("health").stderr
        daemon.proc.send_signal(signal.SIGTERM)
        assert sock.recv(256) == b"STOPPING=1"
        assert daemon.proc.wait(timeout=30) == 0
        assert "development only" in daemon.log.read_text()
        wait_for(lambda: "stopped" in daemon.log.read_text(), what="clean shutdown message")
    finally:
        daemon.kill()
        sock.close()


def test_health_follows_the_backend(tmp_path):
    from grpc_health.v1 import health_pb2, health_pb2_grpc
    import grpc

    from ..conftest import Swtpm, tpm_backend

    tpm = Swtpm(tmp_path / "swtpm")
    daemon = Daemon(tmp_path / "kms", tpm_backend(tpm), extra={"health_interval": 0.3})
    try:
        daemon.start()

        def status():
            with grpc.insecure_channel(f"unix:{daemon.sockets['bin']}") as ch:
                return health_pb2_grpc.HealthStub(ch).Check(
                    health_pb2.HealthCheckRequest(service="segway.kms.v1.Kms"), timeout=10).status

        assert status() == health_pb2.HealthCheckResponse.SERVING
        daemon.ctl("key", "generate", "acme/k", "--algorithm", "EC_P256")
        tpm.stop()  # the TPM goes away: the service reports it and keeps answering
        wait_for(lambda: status() == health_pb2.HealthCheckResponse.NOT_SERVING, timeout=30, what="NOT_SERVING")
        r = daemon.ctl("health", check=False)
        assert r.returncode == 1 and b"NOT_SERVING" in r.stdout
        assert daemon.proc.poll() is None
        # Sign while the TPM is away: UNAVAILABLE, not a hang or a crash.
        sig = tmp_path / "k.sig"
        r = daemon.ctl("key", "sign", "acme/k", "--digest", "00" * 32, "-o", sig, check=False)
        assert r.returncode != 0 and b"TPM" in r.stderr and b"Traceback" not in r.stderr and not sig.exists()
        # The TPM comes back (same state, new process): the daemon reconnects without a restart.
        tpm.start()
        wait_for(lambda: status() == health_pb2.HealthCheckResponse.SERVING, timeout=30, what="SERVING again")
        daemon.ctl("key", "sign", "acme/k", "--digest", "11" * 32, "-o", sig)
        public = serialization.load_der_public_key(daemon.stub().GetPublicKey(pb.KeyRef(name="acme/k")).public_key_der)
        public.verify(sig.read_bytes(), bytes.fromhex("11" * 32), ec.ECDSA(utils.Prehashed(hashes.SHA256())))
        assert "reconnected to the TPM" in daemon.log.read_text()
        assert daemon.proc.poll() is None
    finally:
        daemon.kill()
        tpm.stop()


def test_second_daemon_on_the_same_state_is_refused(tmp_path):
    """One daemon per state directory: a second one stops before it touches the TPM (opening swtpm flushes
    its loaded objects) or the store (the first daemon caches key records and orders the audit anchor)."""
    from ..conftest import Swtpm, tpm_backend

    tpm = Swtpm(tmp_path / "swtpm")
    first = Daemon(tmp_path / "first", tpm_backend(tpm))
    second = Daemon(tmp_path / "second", tpm_backend(tpm), extra={"state_dir": str(first.state)})
    try:
        first.start()
        stub = first.stub("daemon")
        stub.GenerateKey(pb.GenerateKeyRequest(name="acme/k", algorithm=pb.EC_P256))
        stub.Sign(pb.SignRequest(key=pb.KeyRef(name="acme/k"), digest=bytes(32)))
        second.start(expect_ready=False)
        assert second.proc.wait(timeout=60) == 2
        log = second.log.read_text().strip()
        assert "is in use by another process" in log and "Traceback" not in log and log.count("\n") == 0
        stub.Sign(pb.SignRequest(key=pb.KeyRef(name="acme/k"), digest=bytes(32)))  # its key is still loaded
        first.kill()  # kill -9 releases the lock with the process
        second.start()
        second.stub("daemon").Sign(pb.SignRequest(key=pb.KeyRef(name="acme/k"), digest=bytes(32)))
    finally:
        second.kill()
        first.kill()
        tpm.stop()
