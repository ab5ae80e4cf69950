"""Backends directly: non-exportable keys in the token, signatures checked with cryptography."""
from __future__ import annotations

import hashlib
import json

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, utils

from segway_kms.backends.keys import private_key_for
from segway_kms.backends.pkcs11 import Pkcs11Backend
from segway_kms.backends.soft import SoftwareBackend
from segway_kms.backends.tpm import TpmBackend
from segway_kms.errors import BackendError, ConfigError, NotFound

from ..conftest import SOFTHSM_MODULE


def _check_all_algorithms(backend):
    for algorithm in ("EC_P256", "EC_P384", "RSA_2048"):
        ref, der = backend.create_key(algorithm)
        public = serialization.load_der_public_key(der)
        for h in (hashes.SHA256(), hashes.SHA384()):
            digest = hashlib.new(h.name, algorithm.encode()).digest()
            if isinstance(public, ec.EllipticCurvePublicKey):
                public.verify(backend.sign_digest(ref, algorithm, digest, "ecdsa"), digest,
                              ec.ECDSA(utils.Prehashed(h)))
            else:
                public.verify(backend.sign_digest(ref, algorithm, digest, "pkcs1v15"), digest, padding.PKCS1v15(),
                              utils.Prehashed(h))
                public.verify(backend.sign_digest(ref, algorithm, digest, "pss"), digest,
                              padding.PSS(padding.MGF1(h), h.digest_size), utils.Prehashed(h))
        backend.destroy_key(ref)
        with pytest.raises(NotFound) if backend.name != "tpm" else _nothing():
            backend.sign_digest(ref, algorithm, hashlib.sha256().digest(), "ecdsa")


class _nothing:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return True  # a TPM blob stays loadable until the store forgets it; the store is what gets destroyed


def test_pkcs11_keys_are_sensitive_and_never_extractable(softhsm):
    backend = Pkcs11Backend({"module": SOFTHSM_MODULE, "token_label": softhsm.label, "pin_file": str(softhsm.pin_file)})
    try:
        ref, _ = backend.create_key("EC_P256")
        attrs = backend.key_attributes(ref)
        assert attrs["SENSITIVE"] and attrs["ALWAYS_SENSITIVE"] and attrs["NEVER_EXTRACTABLE"] and attrs["TOKEN"]
        assert not attrs["EXTRACTABLE"]
        _check_all_algorithms(backend)
        assert len(backend.random(48)) == 48 and backend.healthy()
    finally:
        backend.close()


def test_pkcs11_pin_never_in_config(softhsm, monkeypatch):
    with pytest.raises(ConfigError, match="pin_file or pin_env"):
        Pkcs11Backend({"module": SOFTHSM_MODULE, "token_label": softhsm.label, "pin": "2222"})
    monkeypatch.setenv("KMS_PIN", "2222")
    Pkcs11Backend({"module": SOFTHSM_MODULE, "token_label": softhsm.label, "pin_env": "KMS_PIN"}).close()


def test_tpm_keys_and_persistent_ca_key(swtpm):
    backend = TpmBackend({"tcti": swtpm.tcti})
    try:
        _check_all_algorithms(backend)
        ref, der = backend.create_key("EC_P256", persistent=True)
        assert json.loads(ref)["t"] == "persistent" and "priv" not in json.loads(ref)
        # a TPM key signs X.509 structures through cryptography's builders
        key = private_key_for(lambda d, s: backend.sign_digest(ref, "EC_P256", d, s), der)
        sig = key.sign(b"tbs", ec.ECDSA(hashes.SHA256()))
        key.public_key().verify(sig, b"tbs", ec.ECDSA(hashes.SHA256()))
        with pytest.raises(Exception):
            key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                              serialization.NoEncryption())
        backend.destroy_key(ref)
        with pytest.raises(NotFound):
            backend.sign_digest(ref, "EC_P256", bytes(32), "ecdsa")
    finally:
        backend.close()


def test_software_backend_refused_in_release(tmp_path, caplog):
    with pytest.raises(ConfigError, match="release"):
        SoftwareBackend(tmp_path / "keys", release=True)
    backend = SoftwareBackend(tmp_path / "keys", release=False)
    assert "development only" in caplog.text
    _check_all_algorithms(backend)


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["tpm", "pkcs11"])
def test_rsa_3072(kind, request):
    if kind == "tpm":
        backend = TpmBackend({"tcti": request.getfixturevalue("swtpm").tcti})
    else:
        hsm = request.getfixturevalue("softhsm")
        backend = Pkcs11Backend({"module": SOFTHSM_MODULE, "token_label": hsm.label, "pin_file": str(hsm.pin_file)})
    try:
        ref, der = backend.create_key("RSA_3072")
        public = serialization.load_der_public_key(der)
        assert public.key_size == 3072
        digest = hashlib.sha384(b"rsa3072").digest()
        public.verify(backend.sign_digest(ref, "RSA_3072", digest, "pss"), digest,
                      padding.PSS(padding.MGF1(hashes.SHA384()), 48), utils.Prehashed(hashes.SHA384()))
    finally:
        backend.close()


def test_tpm_reconnects_after_the_tpm_restarts(swtpm):
    """swtpm stops and comes back on the same state: the backend reports UNAVAILABLE while it is gone and
    then carries on with the same keys (wrapped blob and persistent) through a new ESAPI context."""
    backend = TpmBackend({"tcti": swtpm.tcti})
    try:
        blob_ref, blob_der = backend.create_key("EC_P256")
        persistent_ref, persistent_der = backend.create_key("EC_P256", persistent=True)
        digest = hashlib.sha256(b"before").digest()
        for ref in (blob_ref, persistent_ref):
            backend.sign_digest(ref, "EC_P256", digest, "ecdsa")
        swtpm.stop()
        with pytest.raises(BackendError, match="unreachable"):
            backend.sign_digest(blob_ref, "EC_P256", digest, "ecdsa")
        assert not backend.healthy()
        swtpm.start()
        assert backend.healthy()
        digest = hashlib.sha256(b"after").digest()
        for ref, der in ((blob_ref, blob_der), (persistent_ref, persistent_der)):
            serialization.load_der_public_key(der).verify(backend.sign_digest(ref, "EC_P256", digest, "ecdsa"),
                                                          digest, ec.ECDSA(utils.Prehashed(hashes.SHA256())))
        backend.destroy_key(persistent_ref)
    finally:
        backend.close()
