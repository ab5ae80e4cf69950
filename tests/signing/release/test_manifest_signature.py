"""``release verify`` and the manifest signature: every bit of ``manifest.json.p7s`` matters.

The signature is one exact DER form (SHA-256, no attributes, the signer's certificate only): the
verifier rebuilds that form from the trusted certificate and the signature value and compares bytes,
so a change anywhere outside the signature value is refused, and a change inside it does not verify.
openssl is the oracle that the form written is a valid CMS signature.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest
from asn1crypto import cms as asn1_cms
from cryptography.hazmat.primitives import serialization

from tests.helpers import one_line_error, run_cli
from tests.signing.release.release_fixtures import make_deploy, plan_doc, write_plan
from segway_sign import cms
from segway_sign.errors import InputError, SegwayError, VerificationError
from segway_sign.release import manifest as mf
from segway_sign.release import steps
from segway_sign.release.plan import load_plan
from segway_sign.release.runner import run_release
from segway_sign.release.certs import load_certs_dir
from segway_sign.release.manifest import check_manifest
from segway_sign.release.verify import verify_release

# (byte offset, bit) of manifest.json.p7s that release verify may accept flipped, with the reason.
# Empty: every field outside the signature value is rebuilt from the trusted certificate, and the
# signature value itself is checked by the signature algorithm.
ACCEPTED_FLIPS: dict[tuple[int, int], str] = {}


def make_release(tmp_path: Path, file_keys, manifest_key: str = "release") -> Path:
    make_deploy(tmp_path)
    doc = plan_doc(file_keys.uris)
    doc["manifest_key"] = manifest_key
    plan = load_plan(write_plan(tmp_path / "plan.yaml", doc), set(steps.REGISTRY))
    run_release(plan, tmp_path / "deploy", tmp_path / "rel", file_keys.open_key, file_keys.certs)
    return tmp_path / "rel"


def openssl_verifies(rel: Path, ca: Path) -> subprocess.CompletedProcess:
    return subprocess.run(["openssl", "cms", "-verify", "-binary", "-inform", "DER", "-in", str(rel / mf.SIGNATURE),
                           "-content", str(rel / mf.MANIFEST), "-CAfile", str(ca), "-purpose", "any",
                           "-out", os.devnull], capture_output=True, text=True)


@pytest.mark.parametrize("manifest_key", ["release", "verity"])  # P-256 and RSA-2048
def test_every_bit_flip_of_the_signature_is_refused(tmp_path, file_keys, manifest_key):
    rel = make_release(tmp_path, file_keys, manifest_key)
    certs = load_certs_dir(file_keys.certs)
    raw, sig = (rel / mf.MANIFEST).read_bytes(), (rel / mf.SIGNATURE).read_bytes()
    r = openssl_verifies(rel, file_keys.certs / f"{manifest_key}.pem")
    assert r.returncode == 0, r.stderr
    assert check_manifest(raw, sig, certs)[1].subject.rfc4514_string() == f"CN={manifest_key} test"
    accepted = {}
    for i in range(len(sig)):
        for bit in range(8):
            bad = bytearray(sig)
            bad[i] ^= 1 << bit
            try:
                check_manifest(raw, bytes(bad), certs)
            except SegwayError as err:
                assert "\n" not in str(err), (i, bit, str(err))
            else:
                accepted[(i, bit)] = True
    assert set(accepted) <= set(ACCEPTED_FLIPS), sorted(set(accepted) - set(ACCEPTED_FLIPS))


def test_signature_flips_through_the_cli(tmp_path, file_keys):
    rel = make_release(tmp_path, file_keys)
    sig = (rel / mf.SIGNATURE).read_bytes()
    certs = ["release", "verify", "--certs", str(file_keys.certs), str(rel)]
    # Outer length, SignedData version, digest OID, certificate, SignerInfo serial, signature value.
    info = asn1_cms.ContentInfo.load(sig)["content"]
    cert_at = sig.index(info["certificates"][0].chosen.dump())
    serial = info["signer_infos"][0]["sid"].chosen["serial_number"].contents
    value = info["signer_infos"][0]["signature"].native
    for where in (2, 24, 38, cert_at + 40, sig.rindex(serial) + 3, sig.rindex(value) + 20):
        bad = bytearray(sig)
        bad[where] ^= 0x01
        (rel / mf.SIGNATURE).write_bytes(bad)
        one_line_error(run_cli(certs, timeout=60), 1, "manifest.json.p7s")
    (rel / mf.SIGNATURE).write_bytes(sig)
    assert run_cli(certs, timeout=60).returncode == 0


def test_other_cms_forms_are_refused(tmp_path, file_keys):
    """Valid signatures by the manifest key over the same bytes, in another form: refused."""
    rel = make_release(tmp_path, file_keys)
    certs = load_certs_dir(file_keys.certs)
    raw = (rel / mf.MANIFEST).read_bytes()
    key = file_keys.keys[file_keys.uris["release"]]
    cert = next(c for c in certs if c.subject.rfc4514_string() == "CN=release test")
    forms = {
        "signed attributes": cms.sign_detached(raw, key, cert, attributes=True, include_certs=True),
        "no certificate": cms.sign_detached(raw, key, cert, attributes=False, include_certs=False),
    }
    # A second certificate next to the signer's, and the signer twice.
    good = asn1_cms.ContentInfo.load((rel / mf.SIGNATURE).read_bytes())
    other = asn1_cms.ContentInfo.load(cms.sign_detached(raw, file_keys.keys[file_keys.uris["fit"]],
                                                        next(c for c in certs if "fit" in c.subject.rfc4514_string()),
                                                        attributes=False))
    extra_cert = good.copy()
    extra_cert["content"]["certificates"] = list(good["content"]["certificates"]) + \
        list(other["content"]["certificates"])
    forms["another certificate"] = extra_cert.dump(force=True)
    two_signers = good.copy()
    two_signers["content"]["signer_infos"] = [good["content"]["signer_infos"][0]] * 2
    forms["two signers"] = two_signers.dump(force=True)
    # BER: the same content with a non-minimal (long-form) outer length.
    der = (rel / mf.SIGNATURE).read_bytes()
    assert der[1] == 0x82
    forms["BER length"] = der[:1] + b"\x83\x00" + der[2:]
    # openssl's own form of the same signature (digest algorithm without NULL parameters).
    (tmp_path / "key.pem").write_bytes(key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    subprocess.run(["openssl", "cms", "-sign", "-binary", "-noattr", "-in", str(rel / mf.MANIFEST), "-signer",
                    str(file_keys.certs / "release.pem"), "-inkey", str(tmp_path / "key.pem"), "-outform", "DER",
                    "-out", str(tmp_path / "openssl.p7s")], check=True, capture_output=True)
    forms["openssl form"] = (tmp_path / "openssl.p7s").read_bytes()
    for name, sig in forms.items():
        with pytest.raises((VerificationError, InputError)) as err:
            check_manifest(raw, sig, certs)
        assert "\n" not in str(err.value), name
        assert any(w in str(err.value) for w in ("expected form", "signers", "not valid DER")), (name, str(err.value))


def test_verify_refuses_what_is_not_a_regular_file_at_once(tmp_path, file_keys):
    pristine = make_release(tmp_path, file_keys)
    args = ["release", "verify", "--certs", str(file_keys.certs)]
    keep_sig = (pristine / mf.SIGNATURE).read_bytes()

    def fifo(p: Path):
        p.unlink()
        os.mkfifo(p)

    def directory(p: Path):
        p.unlink()
        p.mkdir()

    def link(p: Path, to: Path):
        p.unlink()
        p.symlink_to(to)

    cases = [
        (lambda r: fifo(r / mf.SIGNATURE), "manifest.json.p7s is not a regular file"),
        (lambda r: fifo(r / mf.MANIFEST), "manifest.json is not a regular file"),
        (lambda r: directory(r / mf.SIGNATURE), "manifest.json.p7s is not a regular file"),
        (lambda r: link(r / mf.MANIFEST, Path("/dev/zero")), "symbolic link"),
        (lambda r: link(r / mf.SIGNATURE, pristine / mf.SIGNATURE), "symbolic link"),
        (lambda r: (r / mf.SIGNATURE).write_bytes(b""), "not valid DER CMS"),
        (lambda r: (r / mf.SIGNATURE).write_bytes(keep_sig[:200]), "not valid DER CMS"),
        (lambda r: (r / mf.SIGNATURE).write_bytes(os.urandom(600)), "manifest.json.p7s"),
        (lambda r: (r / mf.MANIFEST).write_bytes(b""), "does not verify"),
        (lambda r: (r / mf.MANIFEST).write_text("[" * 200_000 + "]" * 200_000), "does not verify"),
        (lambda r: os.mkfifo(r / "disk" / "extra"), "disk/extra is not a regular file or directory"),
        (lambda r: fifo(r / "disk" / "disk.wic"), "disk/disk.wic is not a regular file or directory"),
        (lambda r: link(r / "disk" / "disk.wic", pristine / "disk" / "disk.wic"), "disk/disk.wic is not a regular"),
    ]
    for i, (tamper, message) in enumerate(cases):
        rel = tmp_path / f"case{i}"
        shutil.copytree(pristine, rel)
        tamper(rel)
        one_line_error(run_cli([*args, str(rel)], timeout=30), 1, message)
    one_line_error(run_cli([*args, str(tmp_path / "absent")], timeout=30), 1, "cannot read")
    os.mkfifo(tmp_path / "fifo")
    one_line_error(run_cli([*args, str(tmp_path / "fifo")], timeout=30), 1, "Not a directory")
    assert run_cli([*args, str(pristine)], timeout=30).returncode == 0


def test_manifest_nesting_is_refused_without_a_traceback(tmp_path):
    (tmp_path / mf.MANIFEST).write_text("[" * 200_000 + "]" * 200_000)
    with pytest.raises(InputError, match="nests too deeply"):
        mf.load(tmp_path)


def test_listed_outputs_stay_inside_the_release(tmp_path, file_keys):
    """Even a manifest signed by the manifest key cannot make verify read outside the release."""
    rel = make_release(tmp_path, file_keys)
    doc = json.loads((rel / mf.MANIFEST).read_text())
    key = file_keys.keys[file_keys.uris["release"]]
    certs = load_certs_dir(file_keys.certs)
    cert = next(c for c in certs if c.subject.rfc4514_string() == "CN=release test")
    for name in ("../deploy/disk.wic", "/etc/hostname", "disk/./disk.wic", mf.SIGNATURE):
        evil = dict(doc, outputs={**doc["outputs"], name: "00" * 32})
        raw = mf.encode(evil)
        (rel / mf.MANIFEST).write_bytes(raw)
        (rel / mf.SIGNATURE).write_bytes(mf.sign(raw, key, cert))
        with pytest.raises(VerificationError, match="not a file name inside the release"):
            verify_release(rel, certs)
