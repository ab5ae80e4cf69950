"""``segway-sign stm32``: run as a user would, with token keys and a PIN file."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
from pathlib import Path

from asn1crypto import algos as asn1_algos
from asn1crypto import keys as asn1_keys
from asn1crypto import pem as asn1_pem
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from tests.helpers import ok, one_line_error, run_cli




def mkimage(tmp_path: Path, size: int = 3000) -> Path:
    src, out = tmp_path / "bl2.bin", tmp_path / "bl2.stm32"
    src.write_bytes(os.urandom(size))
    subprocess.run(["mkimage", "-T", "stm32image", "-a", "0x2ffc2500", "-e", "0x2ffc2500", "-d", str(src),
                    str(out)], check=True, capture_output=True, timeout=120)
    return out




def test_sign_verify_pkh(token, tmp_path):
    uri = token.generate("p256", "bl2")
    pin = ["--pin-file", str(token.pin_file)]
    image = mkimage(tmp_path)
    before = image.read_bytes()
    out = tmp_path / "bl2-signed.stm32"
    signed = json.loads(ok(run_cli(["stm32", "sign", "--key", uri, *pin, "--in", str(image), "--out", str(out),
                                    "--image-version", "3", "--json"], token)))
    assert image.read_bytes() == before
    assert signed["header_version"] == "1.0" and signed["image_version"] == 3

    pkh_bin = tmp_path / "pkh.bin"
    fuses = json.loads(ok(run_cli(["stm32", "pkh", "--key", uri, *pin, "--out", str(pkh_bin), "--json"], token)))
    assert fuses["hash"] == signed["hash"] and pkh_bin.read_bytes() == bytes.fromhex(fuses["hash"])
    assert fuses["otp_words"][0] == "0x" + fuses["hash"][:8]

    text = ok(run_cli(["stm32", "verify", "--in", str(out), "--pkh", fuses["hash"]]))
    assert "matches the expected value" in text
    ok(run_cli(["stm32", "verify", "--in", str(out), "--pkh-file", str(pkh_bin)]))
    listed = subprocess.run(["mkimage", "-l", str(out)], capture_output=True, text=True, timeout=60).stdout
    assert "Option     : 0x00000000" in listed

    one_line_error(run_cli(["stm32", "verify", "--in", str(out), "--pkh", "00" * 32]), match="does not match")
    # Without the fused value nothing ties the key to a device: no bare OK, a distinct exit status.
    bare = run_cli(["stm32", "verify", "--in", str(out)])
    assert bare.returncode == 3, bare.stderr
    assert bare.stdout.decode().startswith(f"OK (signature only: no trust anchor given) {out}")


def test_v2_raw_binary_with_key_table(softhsm, tmp_path):
    uris = [softhsm.generate("p256", f"mp13-{i}") for i in range(3)]
    file_key = ec.generate_private_key(ec.SECP256R1())
    pem = tmp_path / "key3.pub.pem"
    pem.write_bytes(file_key.public_key().public_bytes(serialization.Encoding.PEM,
                                                       serialization.PublicFormat.SubjectPublicKeyInfo))
    table = [a for spec in [*uris, str(pem)] for a in ("--keys", spec)]
    pin = ["--pin-file", str(softhsm.pin_file)]
    raw = tmp_path / "bl2.bin"
    raw.write_bytes(os.urandom(2000))
    out = tmp_path / "bl2.stm32"
    signed = json.loads(ok(run_cli(["stm32", "sign", "--key", uris[1], *pin, "--in", str(raw), "--out", str(out),
                                    "--entry", "0x2ffe0000", "--load", "0x2ffe0000", "--binary-type", "0x10",
                                    "--header-version", "2.2", *table, "--json"], softhsm)))
    assert signed["header_version"] == "2.2" and signed["pk_index"] == 1 and signed["kind"] == "PKHTH"
    fuses = json.loads(ok(run_cli(["stm32", "pkh", "--key", uris[0], *pin, "--header-version", "2", *table,
                                   "--json"], softhsm)))
    assert fuses["hash"] == signed["hash"] and len(fuses["pk_hashes"]) == 4
    entries = b"".join(bytes.fromhex(h) for h in fuses["pk_hashes"])
    assert hashlib.sha256(entries).hexdigest() == fuses["hash"]
    verified = json.loads(ok(run_cli(["stm32", "verify", "--in", str(out), "--pkh", fuses["hash"], "--json"])))
    assert verified["pk_index"] == 1 and verified["binary_type"] == "0x10"


def test_errors_are_one_line_and_leave_no_output(softhsm, tmp_path):
    uri = softhsm.generate("p256", "bl2")
    pin = ["--pin-file", str(softhsm.pin_file)]
    out = tmp_path / "out.stm32"
    garbage = tmp_path / "garbage.stm32"
    garbage.write_bytes(b"XXXX" + bytes(400))
    one_line_error(run_cli(["stm32", "sign", "--key", uri, *pin, "--in", str(garbage), "--out", str(out)],
                           softhsm), match="bad magic")
    assert not out.exists() and not list(tmp_path.glob(".out.stm32*"))

    image = mkimage(tmp_path)
    truncated = tmp_path / "truncated.stm32"
    truncated.write_bytes(image.read_bytes()[:1000])
    one_line_error(run_cli(["stm32", "sign", "--key", uri, *pin, "--in", str(truncated), "--out", str(out)],
                           softhsm), match="truncated")
    one_line_error(run_cli(["stm32", "verify", "--in", str(image)]), match="not signed")
    one_line_error(run_cli(["stm32", "sign", "--key", uri, *pin, "--in", str(image), "--out", str(out),
                            "--load", "0x1000"], softhsm), code=2, match="--entry")

    ok(run_cli(["stm32", "sign", "--key", uri, *pin, "--in", str(image), "--out", str(out)], softhsm))
    one_line_error(run_cli(["stm32", "sign", "--key", uri, *pin, "--in", str(image), "--out", str(out)],
                           softhsm), match="exists")
    ok(run_cli(["stm32", "sign", "--key", uri, *pin, "--in", str(image), "--out", str(out), "--force"], softhsm))

    wrong_pin = tmp_path / "wrong.pin"
    wrong_pin.write_text("000000\n")
    wrong_pin.chmod(0o600)
    res = run_cli(["stm32", "sign", "--key", uri, "--pin-file", str(wrong_pin), "--in", str(image),
                   "--out", str(tmp_path / "other.stm32")], softhsm)
    assert res.returncode != 0 and "Traceback" not in res.stderr.decode()
    assert "000000" not in res.stderr.decode() + res.stdout.decode()
    assert not (tmp_path / "other.stm32").exists()

    p384 = softhsm.generate("p384", "wrong-curve")
    one_line_error(run_cli(["stm32", "sign", "--key", p384, *pin, "--in", str(image),
                            "--out", str(tmp_path / "p384.stm32")], softhsm), code=2, match="P-256")


def brainpool_pem(xy: bytes) -> bytes:
    spki = asn1_keys.PublicKeyInfo({
        "algorithm": {"algorithm": "ec",
                      "parameters": asn1_keys.ECDomainParameters(name="named", value="1.3.36.3.3.2.8.1.1.8")},
        "public_key": b"\x04" + xy})
    return asn1_pem.armor("PUBLIC KEY", spki.dump())


def test_brainpool_sign_verify_pkh(token, tmp_path):
    uri = token.generate("bp256t1", "bl2-bp")
    pin = ["--pin-file", str(token.pin_file)]
    image = mkimage(tmp_path)
    out = tmp_path / "bl2-bp.stm32"
    signed = json.loads(ok(run_cli(["stm32", "sign", "--key", uri, *pin, "--in", str(image), "--out", str(out),
                                    "--json"], token)))
    data = out.read_bytes()
    xy = data[108:172]
    assert int.from_bytes(data[104:108], "little") == 2
    assert signed["hash"] == hashlib.sha256(xy).hexdigest() and signed["public_keys"] == [xy.hex()]

    # openssl, with the key written out from the header, checks [72, 256 + image_length).
    pem = tmp_path / "bp.pub.pem"
    pem.write_bytes(brainpool_pem(xy))
    (tmp_path / "sig.der").write_bytes(asn1_algos.DSASignature.from_p1363(data[4:68]).dump())
    (tmp_path / "signed.bin").write_bytes(data[72:])
    res = subprocess.run(["openssl", "dgst", "-sha256", "-verify", str(pem), "-signature", str(tmp_path / "sig.der"),
                          str(tmp_path / "signed.bin")], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0 and "Verified OK" in res.stdout, res.stdout + res.stderr

    from_token = json.loads(ok(run_cli(["stm32", "pkh", "--key", uri, *pin, "--json"], token)))
    from_file = json.loads(ok(run_cli(["stm32", "pkh", "--key", str(pem), "--json"])))
    assert from_token["hash"] == from_file["hash"] == signed["hash"]
    table = json.loads(ok(run_cli(["stm32", "pkh", "--key", str(pem), "--header-version", "2", "--json"])))
    assert table["pk_hashes"] == [hashlib.sha256(b"\x02\x00\x00\x00" + xy).hexdigest()]

    text = ok(run_cli(["stm32", "verify", "--in", str(out), "--pkh", signed["hash"]]))
    assert "matches the expected value" in text
    bad = tmp_path / "bad.stm32"
    bad.write_bytes(data[:10] + bytes([data[10] ^ 1]) + data[11:])
    one_line_error(run_cli(["stm32", "verify", "--in", str(bad)]), match="does not verify")


def test_brainpool_key_refused_outside_stm32(softhsm, tmp_path):
    uri = softhsm.generate("bp256t1", "bl2-bp")
    pin = ["--pin-file", str(softhsm.pin_file)]
    dtb = tmp_path / "u-boot.dtb"
    dtb.write_bytes(subprocess.run(["dtc", "-I", "dts", "-O", "dtb"], input=b"/dts-v1/; / { };",
                                   capture_output=True, check=True, timeout=60).stdout)
    out = tmp_path / "out.dtb"
    one_line_error(run_cli(["fit", "add-pubkey", "--key", uri, *pin, "--dtb", str(dtb), "--out", str(out),
                            "--key-name-hint", "dev"], softhsm), code=2, match="brainpoolP256t1")
    assert not out.exists()


def test_v2_without_keys_says_it_builds_a_one_key_table(softhsm, tmp_path):
    uri = softhsm.generate("p256", "mp13")
    raw = tmp_path / "bl2.bin"
    raw.write_bytes(os.urandom(2000))
    base = ["stm32", "sign", "--key", uri, "--pin-file", str(softhsm.pin_file), "--in", str(raw), "--entry",
            "0x2ffe0000", "--header-version", "2.0"]
    res = run_cli([*base, "--out", str(tmp_path / "a.stm32"), "--json"], softhsm)
    signed = json.loads(ok(res))
    assert signed["key_table"] == "one key: --key (no --keys given)" and signed["kind"] == "PKHTH"
    err = res.stderr.decode()
    assert err.startswith("segway-sign: note: header v2.0 without --keys: building a one-key public-key table")
    one_key = json.loads(ok(run_cli(["stm32", "pkh", "--key", uri, "--pin-file", str(softhsm.pin_file),
                                     "--header-version", "2", "--json"], softhsm)))
    assert one_key["hash"] == signed["hash"]
    # With --keys, or a v1 header (no table), nothing is said.
    res = run_cli([*base, "--keys", uri, "--out", str(tmp_path / "b.stm32")], softhsm)
    ok(res)
    assert b"one-key" not in res.stderr
    v1 = run_cli(["stm32", "sign", "--key", uri, "--pin-file", str(softhsm.pin_file), "--in", str(raw),
                  "--entry", "0x2ffe0000", "--out", str(tmp_path / "c.stm32")], softhsm)
    ok(v1)
    assert v1.stderr == b""
