"""segway-sign verity sign/verify as a user runs them, with keys inside a token (direct and p11-kit)."""

from __future__ import annotations

import json
import os
import subprocess

import pytest

from tests.helpers import run_cli
from tests.signing.release.release_fixtures import token_certs


def test_verity_sign_and_verify_through_each_transport(token, tmp_path):
    uris = token_certs(token, tmp_path / "certs", names=("verity",))
    img = tmp_path / "rootfs.img"
    img.write_bytes(os.urandom(513 * 4096))
    out = tmp_path / "out"
    r = run_cli(["verity", "sign", "--key", uris["verity"], "--cert", str(tmp_path / "certs" / "verity.pem"),
                 "--in", str(img), "--out-dir", str(out), "--salt", "random", "--pin-file", str(token.pin_file),
                 "--json", "--progress"], token)
    assert r.returncode == 0, r.stderr.decode()
    res = json.loads(r.stdout)
    assert res["layout"] == "separate" and res["data_blocks"] == 513
    # The progress bar goes to stderr, never into the JSON on stdout... and JSON disables it.
    assert b"%" not in r.stderr
    v = subprocess.run(["veritysetup", "verify", str(img), str(out / "rootfs.hashtree"), res["root_hash"]],
                       capture_output=True, text=True)
    assert v.returncode == 0, v.stderr
    ok = run_cli(["verity", "verify", "--certs", str(tmp_path / "certs"), "--data", str(img), str(out)])
    assert ok.returncode == 0 and res["root_hash"].encode() in ok.stdout, ok.stderr.decode()
    # One flipped data bit: both our verifier and veritysetup refuse.
    raw = bytearray(img.read_bytes())
    raw[77 * 4096] ^= 4
    img.write_bytes(raw)
    bad = run_cli(["verity", "verify", "--certs", str(tmp_path / "certs"), "--data", str(img), str(out)])
    assert bad.returncode == 1 and bad.stderr.startswith(b"segway-sign: error: root hash mismatch")
    assert subprocess.run(["veritysetup", "verify", str(img), str(out / "rootfs.hashtree"), res["root_hash"]],
                          capture_output=True).returncode != 0


def test_fixed_salt_gives_reproducible_output(softhsm, tmp_path):
    uris = token_certs(softhsm, tmp_path / "certs", names=("verity",))
    img = tmp_path / "rootfs.img"
    img.write_bytes(os.urandom(64 * 4096))
    trees = []
    for n in (1, 2):
        r = run_cli(["verity", "sign", "--key", uris["verity"], "--cert", str(tmp_path / "certs" / "verity.pem"),
                     "--in", str(img), "--out-dir", str(tmp_path / f"o{n}"), "--salt", "ab" * 32, "--appended",
                     "--pin-file", str(softhsm.pin_file)], softhsm)
        assert r.returncode == 0, r.stderr.decode()
        trees.append((tmp_path / f"o{n}" / "rootfs.verity.img").read_bytes())
    assert trees[0] == trees[1]  # superblock UUID included


def test_progress_bar_on_request(softhsm, tmp_path):
    uris = token_certs(softhsm, tmp_path / "certs", names=("verity",))
    img = tmp_path / "rootfs.img"
    img.write_bytes(os.urandom(2048 * 4096))
    r = run_cli(["verity", "sign", "--key", uris["verity"], "--cert", str(tmp_path / "certs" / "verity.pem"),
                 "--in", str(img), "--out-dir", str(tmp_path / "o"), "--pin-file", str(softhsm.pin_file),
                 "--progress", "--appended", "--no-superblock"], softhsm)
    assert r.returncode == 0, r.stderr.decode()
    assert b"hashing rootfs.img" in r.stderr and b"100%" in r.stderr
    assert (tmp_path / "o" / "rootfs.verity.img").stat().st_size > img.stat().st_size


@pytest.mark.parametrize("args,message", [
    (["--in", "{tmp}/missing.img"], "--in {tmp}/missing.img does not exist"),
    (["--in", "{tmp}/fifo.img"], "--in {tmp}/fifo.img is a FIFO, not a regular file"),
    (["--in", "{tmp}/odd.img"], "not a multiple of the data block size 4096"),
    (["--in", "{tmp}/ok.img", "--salt", "xyz"], "salt 'xyz' is not hex"),
    (["--in", "{tmp}/ok.img", "--uuid", "nope"], "--uuid 'nope' is not a UUID"),
    (["--in", "{tmp}/ok.img", "--cert", "{tmp}/ok.img"], "is not an X.509 certificate"),
    (["--in", "{tmp}/ok.img", "--out-dir", "{tmp}"], "exists (use --force"),
    (["--in", "{tmp}/ok.img", "--data-block", "1000"], "must be a power of two"),
])
def test_bad_input_is_one_line_error(softhsm, tmp_path, args, message):
    uris = token_certs(softhsm, tmp_path / "certs", names=("verity",))
    (tmp_path / "odd.img").write_bytes(b"\0" * 5000)
    (tmp_path / "ok.img").write_bytes(b"\0" * 8192)
    os.mkfifo(tmp_path / "fifo.img")  # nothing ever writes to it: reading it would hang
    base = {"--key": uris["verity"], "--cert": str(tmp_path / "certs" / "verity.pem"),
            "--out-dir": str(tmp_path / "out"), "--pin-file": str(softhsm.pin_file)}
    args = [a.format(tmp=tmp_path) for a in args]
    for opt, val in base.items():
        if opt not in args:
            args += [opt, val]
    r = run_cli(["verity", "sign", *args], softhsm)
    err = r.stderr.decode()
    assert r.returncode in (1, 2), err
    assert message.format(tmp=tmp_path) in err and "Traceback" not in err
    assert len([l for l in err.splitlines() if l.strip()]) <= 3  # click usage errors add Usage + hint lines
    assert not (tmp_path / "out").exists()


# --- verity verify against a tampered directory: every attack is one line and a non-zero exit ---------

def _tampered_env(text: str, root: str) -> dict[str, bytes]:
    lines = text.splitlines(keepends=True)
    table = next(line for line in lines if line.startswith("VERITY_TABLE="))
    value = table.split("=", 1)[1].rstrip("\n")
    other = format(int(root, 16) ^ 0xFF, "064x")
    flipped = root[:10] + ("0" if root[10] != "0" else "1") + root[11:]

    def with_table(new: str) -> bytes:
        return text.replace(table, f"VERITY_TABLE={new}\n").encode()

    return {
        "table-root-and-ignore-corruption": with_table(value.replace(root, other) + " 1 ignore_corruption"),
        "table-root-one-character": with_table(value.replace(root, flipped)),
        "command-substitution": "".join("VERITY_IMAGE=$(touch PWNED)\n" if line.startswith("VERITY_IMAGE=")
                                        else line for line in lines).encode(),
        "unknown-key": (text + "VERITY_EXTRA=1\n").encode(),
        "duplicate-key": (text + "VERITY_SALT=-\n").encode(),
        "non-utf8": text.encode().replace(b"VERITY_LAYOUT=", b"VERITY_LAYOUT=\xff\xfe"),
        "option-added": with_table(value + " 1 restart_on_corruption"),
        "root-hash-everywhere": text.replace(root, other).encode(),
        "hash-offset": text.replace("VERITY_HASH_OFFSET=", "VERITY_HASH_OFFSET=4096").encode(),
        "old-sourced-format": text.replace("VERITY_ENV_FORMAT=2\n", "").replace(
            table, f'VERITY_TABLE="{value.replace("@DATA_DEV@", "$VERITY_DATA_DEV")}"\n').encode(),
        "empty": b"",
    }


ENV_ATTACKS = {
    "table-root-and-ignore-corruption": "VERITY_TABLE is not the table the root hash and tree parameters give",
    "table-root-one-character": "its root hash is",
    "command-substitution": "line 17: VERITY_IMAGE must be a file name",
    "unknown-key": "line 22: unknown key 'VERITY_EXTRA'",
    "duplicate-key": "line 22: VERITY_SALT is given twice",
    "non-utf8": "is not UTF-8 text",
    "option-added": "adds optional arguments '1 restart_on_corruption'",
    "root-hash-everywhere": "rootfs.roothash and verity.env disagree",  # consistent, but not the signed one
    "hash-offset": "VERITY_HASH_OFFSET is 4096",
    "old-sourced-format": "does not start with VERITY_ENV_FORMAT=2",
    "empty": "is empty",
}


@pytest.fixture(scope="module")
def signed_dir(tmp_path_factory):
    """An appended-layout directory from `verity sign`'s library call, and the certificate that signs it."""
    import datetime
    import uuid

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import rsa
    from cryptography.x509.oid import NameOID

    from segway_sign.formats.verity import sign as verity_sign
    from segway_sign.formats.verity import tree as verity_tree

    tmp = tmp_path_factory.mktemp("verity-verify")
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "verity cli")])
    now = datetime.datetime(2026, 1, 1, tzinfo=datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(7).not_valid_before(now).not_valid_after(now + datetime.timedelta(days=30))
            .sign(key, hashes.SHA256()))
    (tmp / "cert.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    img = tmp / "rootfs.img"
    img.write_bytes(os.urandom(300 * 4096))
    res = verity_sign.sign_image(img, tmp / "good", key, cert,
                                 verity_tree.VerityParams(salt=b"\x42" * 32, uuid=uuid.UUID(int=5)), appended=True)
    return {"dir": tmp / "good", "cert": tmp / "cert.pem", "root": res.tree.root_hex, "tmp": tmp}


def test_good_directory_passes_and_veritysetup_agrees(signed_dir):
    from tests.helpers import ok

    out = ok(run_cli(["verity", "verify", "--cert", str(signed_dir["cert"]), str(signed_dir["dir"])]))
    assert signed_dir["root"] in out
    img = signed_dir["dir"] / "rootfs.verity.img"
    env = (signed_dir["dir"] / "verity.env").read_text()
    offset = next(line.split("=")[1] for line in env.splitlines() if line.startswith("VERITY_HASH_OFFSET="))
    v = subprocess.run(["veritysetup", "verify", str(img), str(img), signed_dir["root"], f"--hash-offset={offset}"],
                       capture_output=True, text=True)
    assert v.returncode == 0, v.stderr


@pytest.mark.parametrize("attack", sorted(ENV_ATTACKS))
def test_tampered_env_is_refused_with_one_line(signed_dir, tmp_path, attack):
    import shutil

    from tests.helpers import one_line_error

    bad = tmp_path / "bad"
    shutil.copytree(signed_dir["dir"], bad)
    text = (bad / "verity.env").read_text()
    (bad / "verity.env").write_bytes(_tampered_env(text, signed_dir["root"])[attack])
    r = run_cli(["verity", "verify", "--cert", str(signed_dir["cert"]), str(bad)])
    one_line_error(r, 1, ENV_ATTACKS[attack])


@pytest.mark.parametrize("target,content,message", [
    ("rootfs.roothash.p7s", b"\x30\x82\xff\xff" + b"\0" * 40, "the root-hash signature is not DER PKCS#7"),
    ("rootfs.roothash.p7s", b"", "the root-hash signature is not DER PKCS#7"),
    ("rootfs.roothash.p7s", b"\xff" * 9, "the root-hash signature is not DER PKCS#7"),
    ("rootfs.roothash", b"\xff\xfe", "rootfs.roothash and verity.env disagree"),
    ("rootfs.roothash", None, "is not a regular file"),
    ("verity.env", None, "is not a regular file"),
])
def test_malformed_files_are_one_line_errors(signed_dir, tmp_path, target, content, message):
    import shutil

    from tests.helpers import one_line_error

    bad = tmp_path / "bad"
    shutil.copytree(signed_dir["dir"], bad)
    (bad / target).unlink()
    if content is None:
        os.mkfifo(bad / target)  # refused at once, not read (which would block)
    else:
        (bad / target).write_bytes(content)
    r = run_cli(["verity", "verify", "--cert", str(signed_dir["cert"]), str(bad)], timeout=60)
    one_line_error(r, 1, message)


@pytest.mark.parametrize("option", ["--cert", "--certs"])
def test_trusted_certificate_with_a_malformed_subject_is_one_line(signed_dir, tmp_path, option):
    """The long fuzz run's certs/verity.pem bit-flip (0x36b.6 0xc3.0 0x33a.0): a byte of the subject's
    UTF8String that is not UTF-8 (and two in the signature, which nothing checks in a trust anchor).
    cryptography loads it and fails only where the subject is first read, after the signature
    checked; the certificate is refused where it is loaded."""
    import base64

    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    from tests.helpers import one_line_error

    der = x509.load_pem_x509_certificate(signed_dir["cert"].read_bytes()).public_bytes(serialization.Encoding.DER)
    assert der.count(b"verity cli") == 2  # issuer, then subject
    at = der.rindex(b"verity cli") + 5
    der = der[:at] + b"\x89" + der[at + 1:]  # "verity\x89cli"
    certs = tmp_path / "certs"
    certs.mkdir()
    bad = certs / "verity.pem"
    bad.write_bytes(b"-----BEGIN CERTIFICATE-----\n" + base64.encodebytes(der) + b"-----END CERTIFICATE-----\n")
    r = run_cli(["verity", "verify", option, str(bad if option == "--cert" else certs), str(signed_dir["dir"])])
    one_line_error(r, 1, f"{bad} has a malformed subject")
