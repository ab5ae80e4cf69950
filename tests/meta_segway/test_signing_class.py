"""The Python of segway_sign.bbclass and segway_cert.bbclass, run with bitbake's datastore: certificate
fingerprints for vardeps, token options without the PIN on the command line, the environment
taken from bitbake's original environment, deferred mode leaving the input unsigned, and failure on a
missing certificate or output."""
from __future__ import annotations

import datetime
import hashlib
import re

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from .layer import LAYER, class_functions, evaluate, import_bb, metadata_files, segway_sign_bindir

CLASSES = LAYER / "classes"


def make_cert(path):
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "fit-test")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(1).not_valid_before(now).not_valid_after(now + datetime.timedelta(days=1))
            .sign(key, hashes.SHA256()))
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return hashlib.sha256(cert.public_bytes(serialization.Encoding.DER)).hexdigest()


def datastore(**values):
    bb = import_bb()
    d = bb.data.init()
    for key, value in values.items():
        d.setVar(key, value)
    return d


def test_fingerprint_is_sha256_of_der(tmp_path):
    f = class_functions("segway_cert.bbclass")
    expected = make_cert(tmp_path / "fit.crt")
    d = datastore(SEGWAY_FIT_CERT=str(tmp_path / "fit.crt"))
    assert f["segway_cert_fingerprint"](d, "SEGWAY_FIT_CERT") == expected
    make_cert(tmp_path / "fit.crt")  # key rotation: same path, new certificate
    assert f["segway_cert_fingerprint"](d, "SEGWAY_FIT_CERT") != expected
    d.setVar("SEGWAY_FIT_CERT", str(tmp_path / "missing.crt"))
    assert f["segway_cert_fingerprint"](d, "SEGWAY_FIT_CERT") == "none"


def test_fingerprint_variable_reaches_the_task_signature(tmp_path):
    """The fingerprint variable of the class expands to the certificate's fingerprint."""
    f = class_functions("segway_cert.bbclass")
    expected = make_cert(tmp_path / "v.crt")
    d = evaluate([CLASSES / "segway_cert.bbclass"], {"SEGWAY_VERITY_CERT": str(tmp_path / "v.crt")})
    # bitbake's method pool puts a class's def functions where ${@...} expressions find them.
    bb = import_bb()
    bb.utils._context["segway_cert_fingerprint"] = f["segway_cert_fingerprint"]
    assert d.getVar(f["segway_cert_vardeps"]("SEGWAY_VERITY_CERT")) == expected


def test_every_signing_task_depends_on_a_fingerprint():
    for path in metadata_files():
        text = path.read_text()
        calls = re.findall(r'segway_sign\(d, "[a-z0-9-]+", .*?"(SEGWAY_[A-Z0-9_]+_CERT)"\)', text, re.S)
        if "segway_add_fit_pubkey(d," in text and path.name != "segway_sign.bbclass":
            calls.append("SEGWAY_FIT_CERT")
        for cert_var in calls:
            assert "segway_cert_vardeps('%s')" % cert_var in text, "%s: no vardeps on %s" % (path.name, cert_var)


def test_token_args_keep_the_pin_off_the_command_line():
    f = class_functions("segway_cert.bbclass", "segway_sign.bbclass")
    args = f["segway_token_args"]({"SEGWAY_PKCS11_MODULE": "/usr/lib/libpkcs11-proxy.so", "SEGWAY_PIN": "123456"})
    assert args == ["--module", "/usr/lib/libpkcs11-proxy.so", "--pin-env", "SEGWAY_PIN"]
    assert "123456" not in args
    args = f["segway_token_args"]({"SEGWAY_PIN_FILE": "/run/secrets/pin", "SEGWAY_PIN": "123456"})
    assert args == ["--pin-file", "/run/secrets/pin"]


def test_environment_comes_from_the_original_environment():
    f = class_functions("segway_cert.bbclass", "segway_sign.bbclass")
    origenv = datastore(PKCS11_PROXY_SOCKET="tls://hsm:2345", PKCS11_PROXY_TLS_PSK_FILE="/run/psk",
                        UNRELATED="x")
    d = datastore(PATH="/sysroot/bin:/usr/bin", WORKDIR="/work",
                  SEGWAY_SIGN_ENV_VARS="PKCS11_PROXY_SOCKET PKCS11_PROXY_TLS_PSK_FILE SEGWAY_PIN_FILE")
    d.setVar("BB_ORIGENV", origenv)
    env = f["segway_sign_environment"](d)
    assert env["PKCS11_PROXY_SOCKET"] == "tls://hsm:2345"
    assert env["PKCS11_PROXY_TLS_PSK_FILE"] == "/run/psk"
    assert "UNRELATED" not in env and "SEGWAY_PIN_FILE" not in env
    assert env["PATH"] == "/sysroot/bin:/usr/bin"


def signing_datastore(tmp_path, mode, cert_present=True):
    f = class_functions("segway_cert.bbclass", "segway_sign.bbclass")
    cert = tmp_path / "fit.crt"
    if cert_present:
        make_cert(cert)
    d = datastore(SEGWAY_SIGN_MODE=mode, PN="segway-fit-image",
                  MACHINE="qemuarm64-secureboot", PATH=str(tmp_path / "bin"), WORKDIR=str(tmp_path),
                  SEGWAY_SIGN_LOCK=str(tmp_path / "hsm.lock"), SEGWAY_SIGN_ENV_VARS="",
                  SEGWAY_FIT_CERT=str(cert))
    d.setVar("SEGWAY_CERT_FP_SEGWAY_FIT_CERT", f["segway_cert_fingerprint"](d, "SEGWAY_FIT_CERT"))
    return f, d


class Fatal(Exception):
    pass


@pytest.fixture
def fatal(monkeypatch):
    bb = import_bb()

    def raise_fatal(*args):
        raise Fatal(" ".join(str(a) for a in args))
    monkeypatch.setattr(bb, "fatal", raise_fatal)
    monkeypatch.setattr(bb, "note", lambda *a: None)


def test_deferred_mode_copies_the_input_unsigned(tmp_path, fatal):
    f, d = signing_datastore(tmp_path, "deferred")
    unsigned = tmp_path / "unsigned.itb"
    unsigned.write_bytes(b"FIT")
    out = tmp_path / "segway-fit-qemuarm64-secureboot.itb"
    argv = ["fit", "sign", "--key", "pkcs11:token=t;object=segway-dev-fit", "--in", str(unsigned), "--out", str(out)]
    f["segway_sign"](d, "fit", argv, [str(unsigned)], str(out), "SEGWAY_FIT_CERT")
    assert out.read_bytes() == b"FIT"
    # The signing plan (plan.yaml) is the release job's only record: the task writes nothing else.
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["fit.crt", unsigned.name, out.name])


def write_tool(tmp_path, body):
    bindir = tmp_path / "bin"
    bindir.mkdir(exist_ok=True)
    tool = bindir / "segway-sign"
    tool.write_text("#!/bin/sh\n" + body)
    tool.chmod(0o755)


def test_hsm_mode_fails_without_certificate(tmp_path, fatal):
    f, d = signing_datastore(tmp_path, "hsm", cert_present=False)
    (tmp_path / "in").write_bytes(b"x")
    with pytest.raises(Fatal, match="certificate"):
        f["segway_sign"](d, "fit", ["fit", "sign"], [str(tmp_path / "in")], str(tmp_path / "out"), "SEGWAY_FIT_CERT")


def test_hsm_mode_fails_when_the_tool_fails(tmp_path, fatal):
    f, d = signing_datastore(tmp_path, "hsm")
    (tmp_path / "in").write_bytes(b"x")
    write_tool(tmp_path, 'echo "error: key not found" >&2; exit 3\n')
    with pytest.raises(Fatal, match="exit 3"):
        f["segway_sign"](d, "fit", ["fit", "sign"], [str(tmp_path / "in")], str(tmp_path / "out"), "SEGWAY_FIT_CERT")


def test_hsm_mode_fails_when_no_output_is_written(tmp_path, fatal):
    """A tool that exits 0 without writing the signature (mkimage's known failure) fails the task."""
    f, d = signing_datastore(tmp_path, "hsm")
    (tmp_path / "in").write_bytes(b"x")
    write_tool(tmp_path, "exit 0\n")
    with pytest.raises(Fatal, match="was not written"):
        f["segway_sign"](d, "fit", ["fit", "sign"], [str(tmp_path / "in")], str(tmp_path / "out"), "SEGWAY_FIT_CERT")


def test_hsm_mode_passes_token_options_and_lock(tmp_path, fatal):
    f, d = signing_datastore(tmp_path, "hsm")
    (tmp_path / "in").write_bytes(b"x")
    out = tmp_path / "out"
    write_tool(tmp_path, 'printf "%%s\\n" "$@" > %s/argv; echo signed > %s\n' % (tmp_path, out))
    origenv = datastore(SEGWAY_PIN_FILE="/run/pin", SEGWAY_PKCS11_MODULE="/lib/p11.so")
    d.setVar("BB_ORIGENV", origenv)
    d.setVar("SEGWAY_SIGN_ENV_VARS", "SEGWAY_PIN_FILE SEGWAY_PKCS11_MODULE")
    f["segway_sign"](d, "fit", ["fit", "sign", "--in", "in"], [str(tmp_path / "in")], str(out), "SEGWAY_FIT_CERT")
    assert (tmp_path / "argv").read_text().split() == ["fit", "sign", "--in", "in", "--module", "/lib/p11.so",
                                                      "--pin-file", "/run/pin"]
    assert out.read_text() == "signed\n"


@pytest.mark.parametrize("mode", ["hsm", "deferred"])
def test_fit_pubkey_comes_from_the_certificate_in_both_modes(tmp_path, fatal, mode):
    """U-Boot gets the FIT key from the pinned certificate with the real segway-sign, without any
    token variable, also when signing is deferred (the release job does not re-key U-Boot)."""
    import subprocess

    import libfdt

    f, d = signing_datastore(tmp_path, mode)
    d.setVar("PATH", segway_sign_bindir() + ":/usr/bin:/bin")
    d.setVar("SEGWAY_FIT_KEY_NAME", "segway-dev-fit")
    origenv = datastore(SEGWAY_PIN_FILE="/run/pin", SEGWAY_PKCS11_MODULE=str(tmp_path / "no-module.so"))
    d.setVar("BB_ORIGENV", origenv)
    d.setVar("SEGWAY_SIGN_ENV_VARS", "SEGWAY_PIN_FILE SEGWAY_PKCS11_MODULE")
    dtb = tmp_path / "u-boot.dtb"
    subprocess.run(["dtc", "-I", "dts", "-O", "dtb", "-o", str(dtb), "-"], input=b"/dts-v1/; / { model = \"q\"; };",
                   check=True)
    out = tmp_path / "keyed.dtb"
    f["segway_add_fit_pubkey"](d, str(dtb), str(out))
    fdt = libfdt.Fdt(out.read_bytes())
    node = fdt.path_offset("/signature/segway-dev-fit")
    assert fdt.getprop(node, "required").as_str() == "conf"
    assert fdt.getprop(node, "algo").as_str() == "sha256,ecdsa256"
    assert not (tmp_path / "plan").exists()  # nothing left for the release job to do


def test_fit_pubkey_fails_without_certificate(tmp_path, fatal):
    f, d = signing_datastore(tmp_path, "deferred", cert_present=False)
    (tmp_path / "in.dtb").write_bytes(b"x")
    with pytest.raises(Fatal, match="SEGWAY_FIT_CERT"):
        f["segway_add_fit_pubkey"](d, str(tmp_path / "in.dtb"), str(tmp_path / "out.dtb"))
    assert not (tmp_path / "out.dtb").exists()
