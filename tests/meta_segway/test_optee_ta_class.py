"""segway_optee_ta.bbclass, run with bitbake's datastore and the real segway-sign: OP-TEE's
TA_PUBLIC_KEY comes from the TA signing certificate (RSA only, never without it), TAs are signed with
the token key (and verify with the certificate), deferred mode leaves them unsigned;
the optee-os append builds with that key, not upstream's default."""
from __future__ import annotations

import datetime
import subprocess
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from tests.signing.formats.optee.ta_fixtures import TA_UUID, build_ta_elf

from .layer import LAYER, class_functions, import_bb, segway_sign_bindir
from .test_signing_class import Fatal, datastore, fatal  # noqa: F401  (fixture)


def write_cert(path: Path, key) -> None:
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "optee-ta-test")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(1).not_valid_before(now).not_valid_after(now + datetime.timedelta(days=1))
            .sign(key, hashes.SHA256()))
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))


def class_datastore(tmp_path, mode, cert: Path):
    f = class_functions("segway_cert.bbclass", "segway_sign.bbclass", "segway_optee_ta.bbclass")
    work = tmp_path / "work"
    d = datastore(SEGWAY_SIGN_MODE=mode, PN="optee-os",
                  MACHINE="qemuarm64-secureboot", PATH=segway_sign_bindir() + ":/usr/bin:/bin",
                  WORKDIR=str(tmp_path), SEGWAY_SIGN_LOCK=str(tmp_path / "hsm.lock"), SEGWAY_SIGN_ENV_VARS="",
                  SEGWAY_OPTEE_TA_CERT=str(cert), SEGWAY_OPTEE_TA_PUBKEY=str(work / "ta-public-key.pem"),
                  SEGWAY_OPTEE_TA_BUILD_KEY=str(work / "throwaway.pem"), SEGWAY_OPTEE_TA_DIRS=str(tmp_path / "b"),
                  SEGWAY_OPTEE_TA_ALGO="pkcs1",
                  SEGWAY_OPTEE_TA_KEY_URI="pkcs11:token=t;object=segway-dev-optee-ta")
    d.setVar("SEGWAY_CERT_FP_SEGWAY_OPTEE_TA_CERT", f["segway_cert_fingerprint"](d, "SEGWAY_OPTEE_TA_CERT"))
    return f, d


def test_public_key_from_the_certificate(tmp_path, fatal):
    from cryptography.hazmat.primitives.asymmetric import rsa
    key = rsa.generate_private_key(65537, 3072)
    write_cert(tmp_path / "ta.crt", key)
    f, d = class_datastore(tmp_path, "deferred", tmp_path / "ta.crt")
    f["segway_optee_ta_keys"](d)
    pem = Path(d.getVar("SEGWAY_OPTEE_TA_PUBKEY")).read_bytes()
    assert pem == key.public_key().public_bytes(serialization.Encoding.PEM,
                                                serialization.PublicFormat.SubjectPublicKeyInfo)
    throwaway = serialization.load_pem_private_key(Path(d.getVar("SEGWAY_OPTEE_TA_BUILD_KEY")).read_bytes(), None)
    assert throwaway.public_key().public_numbers() != key.public_key().public_numbers()
    write_cert(tmp_path / "ec.crt", ec.generate_private_key(ec.SECP256R1()))
    f, d = class_datastore(tmp_path, "hsm", tmp_path / "ec.crt")
    with pytest.raises(Fatal, match="RSA"):
        f["segway_optee_ta_keys"](d)
    f, d = class_datastore(tmp_path, "deferred", tmp_path / "missing.crt")
    with pytest.raises(Fatal, match="SEGWAY_OPTEE_TA_CERT"):
        f["segway_optee_ta_keys"](d)


def test_tas_signed_with_the_token_key(tmp_path, fatal, softhsm):
    uri = softhsm.generate("rsa2048", "segway-dev-optee-ta")
    write_cert(tmp_path / "ta.crt", softhsm.open_key(uri))
    elf = build_ta_elf(tmp_path / "b" / "ta" / "hello")
    f, d = class_datastore(tmp_path, "hsm", tmp_path / "ta.crt")
    d.setVar("SEGWAY_OPTEE_TA_KEY_URI", uri)
    d.setVar("BB_ORIGENV", datastore(SEGWAY_PIN_FILE=str(softhsm.pin_file), SEGWAY_PKCS11_MODULE=softhsm.module,
                                     SOFTHSM2_CONF=str(softhsm.conf)))
    d.setVar("SEGWAY_SIGN_ENV_VARS", "SEGWAY_PIN_FILE SEGWAY_PKCS11_MODULE SOFTHSM2_CONF")
    [ta] = f["segway_optee_ta_sign_all"](d)
    assert ta == str(elf.parent / f"{TA_UUID}.ta")
    res = subprocess.run([str(Path(segway_sign_bindir()) / "segway-sign"), "ta", "verify", ta, "--cert",
                          str(tmp_path / "ta.crt"), "--uuid", str(TA_UUID)], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr


def test_deferred_leaves_tas_unsigned(tmp_path, fatal):
    from cryptography.hazmat.primitives.asymmetric import rsa
    write_cert(tmp_path / "ta.crt", rsa.generate_private_key(65537, 2048))
    elf = build_ta_elf(tmp_path / "b" / "ta" / "hello")
    f, d = class_datastore(tmp_path, "deferred", tmp_path / "ta.crt")
    [ta] = f["segway_optee_ta_sign_all"](d)
    assert ta == str(elf.parent / f"{TA_UUID}.ta")
    assert Path(ta).read_bytes() == elf.read_bytes()


def test_optee_os_builds_with_the_certificates_key():
    append = (LAYER / "recipes-security" / "optee" / "optee-os_%.bbappend").read_text()
    assert "inherit segway_optee_ta" in append and "TA_PUBLIC_KEY=${SEGWAY_OPTEE_TA_PUBKEY}" in append
    assert "default.pem" not in append.replace("never upstream's keys/default.pem", "")
    inc = (LAYER / "conf" / "distro" / "include" / "segway-signing.inc").read_text()
    assert 'SEGWAY_OPTEE_TA_CERT ?= "${SEGWAY_SIGN_CERT_DIR}/${SEGWAY_SIGN_KEY_PREFIX}-optee-ta.crt"' in inc
    assert "object=${SEGWAY_SIGN_KEY_PREFIX}-optee-ta" in inc
    assert import_bb() is not None
