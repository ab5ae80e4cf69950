"""Assemble the service from a Config: backend, store, audit chain, CA, gRPC servers and health."""
from __future__ import annotations

import datetime
import grp
import logging
import os
import threading
from concurrent import futures
from pathlib import Path

import grpc
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from segway_kms.api import kms_pb2_grpc
from segway_kms.audit.chain import AuditChain
from segway_kms.audit.denials import DenialAudit
from segway_kms.backends import open_backend
from segway_kms.ca.authority import Authority
from segway_kms.config import Config
from segway_kms.errors import ConfigError, FailedPrecondition, NotFound
from segway_kms.fsutil import atomic_write
from segway_kms.keyring import Keyring
from segway_kms.server import notify
from segway_kms.server.auth import AuthInterceptor
from segway_kms.server.rbac import Rbac
from segway_kms.server.service import KmsServicer
from segway_kms.store import Store

log = logging.getLogger(__name__)
SERVICE_NAME = "segway.kms.v1.Kms"
AUDIT_KEY = "audit"


def _gid(group: str) -> int:
    if group.isdigit():
        return int(group)
    try:
        return grp.getgrnam(group).gr_gid
    except KeyError:
        raise ConfigError(f"unknown group {group!r} for the Unix socket") from None


class KmsApp:
    def __init__(self, cfg: Config):
        self.cfg = cfg
        cfg.state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        # The store first: its lock refuses a second daemon on this state directory before that daemon
        # touches the backend (opening a TPM without a resource manager flushes its loaded objects).
        self.store = Store(cfg.state_dir / "kms.db")
        try:
            self.backend = open_backend(cfg.backend, cfg.state_dir, release=cfg.profile == "release")
        except BaseException:
            self.store.close()
            raise
        self.keyring = Keyring(self.backend, self.store)
        try:
            audit_key = self.keyring.get_system(AUDIT_KEY)
        except NotFound:
            audit_key = self.keyring.generate_system(AUDIT_KEY, "EC_P256", persistent=True)
        audit_version = audit_key.version()
        self.audit_public_pem = serialization.load_der_public_key(audit_version.public_der).public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        atomic_write(cfg.state_dir / "audit-public.pem", self.audit_public_pem)
        self.keyring.audit = AuditChain(
            lambda digest: self.keyring.sign_checked(audit_key, audit_version, digest, "ecdsa"),
            store=self.store, anchor=self._audit_anchor())
        self.denials = DenialAudit(self.keyring.audit, self.store)
        self.authority = Authority(self.keyring, self.store, dict(cfg.cert_profiles), cfg.crl_days,
                                   publish_dir=cfg.state_dir)
        self.rbac = Rbac(cfg.principals)
        self.health = health.HealthServicer()
        self.servicer = KmsServicer(self.keyring, self.authority, self.audit_public_pem, on_ca_ready=self.start_tcp)
        self._servers: list[grpc.Server] = []
        self._tcp_lock = threading.Lock()
        self._tcp_started = False
        self._stop = threading.Event()
        self.tcp_port: int | None = None

    def _audit_anchor(self):
        index = getattr(self.backend, "anchor_index", None)
        if not index:
            log.info("the audit log has no TPM anchor (backend %s)", self.backend.name)
            return None
        # Imported here: it loads tpm2-pytss (about 7 MiB), which a daemon on PKCS#11 never needs.
        from segway_kms.audit.anchor import AuditAnchor

        anchor = AuditAnchor(self.backend, self.store, index)
        try:
            anchor.reconcile()
        except FailedPrecondition as exc:
            if self.cfg.profile == "release":
                raise
            log.error("%s; new entries are not anchored (development profile)", exc)
        return anchor

    def _server(self, interceptor) -> grpc.Server:
        server = grpc.server(futures.ThreadPoolExecutor(max_workers=self.cfg.workers), interceptors=[interceptor],
                             options=[("grpc.max_receive_message_length", self.cfg.max_request_bytes),
                                      ("grpc.so_reuseport", 0)])
        kms_pb2_grpc.add_KmsServicer_to_server(self.servicer, server)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, server)
        return server

    def start(self) -> None:
        for listener in self.cfg.unix:
            gid = _gid(listener.group)
            path = Path(listener.path)
            path.parent.mkdir(parents=True, exist_ok=True, mode=0o750)
            if path.exists():
                path.unlink()
            server = self._server(AuthInterceptor(self.rbac, unix_group=listener.group,
                                                  on_denied=self.denials.record))
            server.add_insecure_port(f"unix:{path}")
            server.start()
            os.chown(path, -1, gid)
            os.chmod(path, listener.mode)
            self._servers.append(server)
            log.info("listening on unix:%s (group %s)", path, listener.group)
        if self.cfg.tcp is not None:
            if self.authority.certificate() is None:
                log.warning("TCP listener waits for the CA: initialise it over the Unix socket first")
            else:
                self.start_tcp()
        self._set_health()
        threading.Thread(target=self._monitor, name="health", daemon=True).start()

    def _tls_configuration(self):
        """Key + chain for the mTLS listener. gRPC core needs the key in memory, so it cannot live in the
        TPM; instead it never touches the disk: a fresh key at every start and every renewal (at half of
        the certificate's lifetime), certified by this KMS's CA. Clients trust the CA, not the key."""
        legacy = self.cfg.state_dir / "tls-server-key.pem"  # written by earlier versions
        if legacy.exists():
            legacy.unlink()
        key = ec.generate_private_key(ec.SECP256R1())
        cert = self.authority.issue_tls_server(self.cfg.tcp.server_name, key.public_key())
        self._tls_renew_at = cert.not_valid_before_utc + (cert.not_valid_after_utc - cert.not_valid_before_utc) / 2
        roots = self.authority.certificate().public_bytes(serialization.Encoding.PEM)
        chain = cert.public_bytes(serialization.Encoding.PEM) + self.authority.chain_pem()
        key_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                    serialization.NoEncryption())
        return grpc.ssl_server_certificate_configuration([(key_pem, chain)], root_certificates=roots)

    def _fetch_tls(self):
        # called by gRPC core at handshakes: None keeps the current configuration
        if datetime.datetime.now(datetime.timezone.utc) < self._tls_renew_at:
            return None
        try:
            return self._tls_configuration()
        except Exception:  # noqa: BLE001 - keep serving with the current certificate
            log.exception("could not renew the TLS server certificate")
            return None

    def start_tcp(self) -> None:
        """Start the mTLS listener once the CA exists."""
        with self._tcp_lock:
            if self._tcp_started or self.cfg.tcp is None:
                return
            creds = grpc.dynamic_ssl_server_credentials(self._tls_configuration(), self._fetch_tls,
                                                        require_client_authentication=True)
            server = self._server(AuthInterceptor(self.rbac, is_revoked=self.authority.is_revoked,
                                                  on_denied=self.denials.record))
            self.tcp_port = server.add_secure_port(self.cfg.tcp.address, creds)
            server.start()
            self._servers.append(server)
            self._tcp_started = True
            atomic_write(self.cfg.state_dir / "tcp.port", f"{self.tcp_port}\n".encode())
            log.info("listening on %s (mTLS, port %d)", self.cfg.tcp.address, self.tcp_port)

    def _set_health(self) -> bool:
        ok = self.backend.healthy()
        status = health_pb2.HealthCheckResponse.SERVING if ok else health_pb2.HealthCheckResponse.NOT_SERVING
        self.health.set("", status)
        self.health.set(SERVICE_NAME, status)
        return ok

    def _monitor(self) -> None:
        interval = notify.watchdog_interval()
        while not self._stop.wait(min(interval or self.cfg.health_interval, self.cfg.health_interval)):
            healthy = self._set_health()
            if healthy and interval:
                notify.notify("WATCHDOG=1")
            if healthy and self.authority.certificate() is not None:
                try:
                    self.authority.crl()  # re-signs and republishes crl.pem once half its validity has passed
                except Exception:  # noqa: BLE001 - a failed republish must not stop the monitor
                    log.exception("could not republish the CRL")

    def stop(self, grace: float = 5.0) -> None:
        self._stop.set()
        self.health.enter_graceful_shutdown()
        events = [s.stop(grace) for s in self._servers]
        for e in events:
            e.wait()
        self.backend.close()
        self.store.close()
