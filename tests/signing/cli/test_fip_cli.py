"""``segway-sign fip``: run as a user would, ROT key in the token, FIP read back with fiptool."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path


from tests.helpers import ok, one_line_error, run_cli

CFG_CERT_UUID = "501D8DD2-8BCE-49A5-84EB-559A9F2EAEAF"




def images(tmp_path: Path) -> dict[str, Path]:
    out = {}
    for name in ("tos-fw", "tos-fw-extra1", "tos-fw-extra2", "nt-fw", "hw-config", "fw-config"):
        out[name] = tmp_path / f"{name}.bin"
        out[name].write_bytes(os.urandom(2500))
    return out


def fiptool_info(path: Path) -> str:
    res = subprocess.run(["fiptool", "info", str(path)], capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    return res.stdout


def test_sign_fip_and_verify(token, tmp_path):
    uri = token.generate("p256", "rot")
    pin = ["--pin-file", str(token.pin_file)]
    imgs = images(tmp_path)
    unsigned = tmp_path / "fip.bin"
    subprocess.run(["fiptool", "create", *[a for n, p in imgs.items() for a in (f"--{n}", str(p))], str(unsigned)],
                   check=True, capture_output=True, timeout=60)
    before = unsigned.read_bytes()
    out = tmp_path / "fip-signed.bin"
    report = json.loads(ok(run_cli(["fip", "sign", "--rot-key", uri, *pin, "--fip", str(unsigned), "--out", str(out),
                                    "--tfw-nvctr", "2", "--ntfw-nvctr", "3", "--json"], token)))
    assert unsigned.read_bytes() == before
    assert report["nv_counters"] == {"trusted_nvctr": 2, "non_trusted_nvctr": 3}
    assert report["warnings"] == ["the trusted and non-trusted firmware NV counters differ (--tfw-nvctr 2, "
                                  "--ntfw-nvctr 3); a board refuses images below the counters it stores"]
    info = fiptool_info(out)
    assert len(info.strip().splitlines()) == 12 and CFG_CERT_UUID in info

    # The ROT key's PKH is the STM32MP15 PKH of the BL2 signing key.
    fuses = json.loads(ok(run_cli(["stm32", "pkh", "--key", uri, *pin, "--json"], token)))
    assert fuses["hash"] == report["rot_pkh"]
    ok(run_cli(["fip", "verify", "--fip", str(out), "--pkh", fuses["hash"]]))
    one_line_error(run_cli(["fip", "verify", "--fip", str(out), "--pkh", "11" * 32]), match="PKH")


def test_nv_counters_that_differ_are_warned_about(softhsm, tmp_path):
    uri = softhsm.generate("p256", "rot")
    imgs = images(tmp_path)
    base = ["fip", "sign", "--rot-key", uri, "--pin-file", str(softhsm.pin_file),
            *[a for n, p in imgs.items() for a in (f"--{n}", str(p))]]
    res = run_cli([*base, "--out", str(tmp_path / "a.bin"), "--tfw-nvctr", "5"], softhsm)
    ok(res)
    assert res.stderr.decode() == ("segway-sign: warning: the trusted and non-trusted firmware NV counters differ "
                                   "(--tfw-nvctr 5, --ntfw-nvctr 0); a board refuses images below the counters "
                                   "it stores\n")
    same = run_cli([*base, "--out", str(tmp_path / "b.bin"), "--tfw-nvctr", "5", "--ntfw-nvctr", "5", "--json"],
                   softhsm)
    assert "warnings" not in json.loads(ok(same)) and same.stderr == b""


def test_sign_separate_images_with_certs_dir(softhsm, tmp_path):
    uri = softhsm.generate("p256", "rot")
    imgs = images(tmp_path)
    out, certs = tmp_path / "fip.bin", tmp_path / "certs"
    ok(run_cli(["fip", "sign", "--rot-key", uri, "--pin-file", str(softhsm.pin_file),
                *[a for n, p in imgs.items() for a in (f"--{n}", str(p))], "--out", str(out),
                "--certs-dir", str(certs)], softhsm))
    assert sorted(p.name for p in certs.iterdir()) == sorted(
        f"{n}.crt" for n in ("stm32mp_cfg_cert", "trusted_key_cert", "tos_fw_key_cert", "tos_fw_content_cert",
                             "nt_fw_key_cert", "nt_fw_content_cert"))
    res = subprocess.run(["openssl", "x509", "-inform", "DER", "-noout", "-subject", "-in",
                          str(certs / "stm32mp_cfg_cert.crt")], capture_output=True, text=True, timeout=60)
    assert "STM32MP config FW Certificate" in res.stdout
    assert "cmdline=\"--nt-fw-cert\"" in fiptool_info(out)


def test_errors(softhsm, tmp_path):
    uri = softhsm.generate("p256", "rot")
    pin = ["--pin-file", str(softhsm.pin_file)]
    imgs = images(tmp_path)
    out = tmp_path / "out.bin"
    one_line_error(run_cli(["fip", "sign", "--rot-key", uri, *pin, "--out", str(out)], softhsm),
                   code=2, match="either --fip")
    one_line_error(run_cli(["fip", "sign", "--rot-key", uri, *pin, "--fip", str(imgs["nt-fw"]),
                            "--out", str(out)], softhsm), match="not a FIP")
    one_line_error(run_cli(["fip", "sign", "--rot-key", uri, *pin, "--nt-fw", str(imgs["nt-fw"]),
                            "--out", str(out)], softhsm), match="tos_fw")
    assert not out.exists()
    out.write_bytes(b"keep")
    one_line_error(run_cli(["fip", "sign", "--rot-key", uri, *pin, "--tos-fw", str(imgs["tos-fw"]),
                            "--nt-fw", str(imgs["nt-fw"]), "--out", str(out)], softhsm), match="exists")
    assert out.read_bytes() == b"keep"
    one_line_error(run_cli(["fip", "verify", "--fip", str(imgs["tos-fw"])]), match="not a FIP")


def _signed_fip(tok, tmp_path: Path, *extra: str, env: dict | None = None) -> tuple[str, Path]:
    uri = tok.generate("p256", "rot")
    imgs = images(tmp_path)
    out = tmp_path / "fip-signed.bin"
    ok(run_cli(["fip", "sign", "--rot-key", uri, "--tos-fw", str(imgs["tos-fw"]), "--nt-fw", str(imgs["nt-fw"]),
                "--out", str(out), *extra], tok, env=env))
    return uri, out


def test_invalid_public_key_in_a_certificate(softhsm, tmp_path):
    """A certificate whose subject key is not a point on P-256 (one byte of X changed where the
    ROT key is carried): one line and exit 1, not cryptography's ValueError."""
    from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
    uri, out = _signed_fip(softhsm, tmp_path, "--pin-file", str(softhsm.pin_file))
    point = softhsm.open_key(uri).public_key().public_bytes(Encoding.X962, PublicFormat.UncompressedPoint)
    data = out.read_bytes()
    assert data.count(point) >= 2  # trusted_key_cert and stm32mp_cfg_cert
    bad = bytearray(point)
    bad[5] ^= 0x40
    tampered = tmp_path / "tampered.bin"
    tampered.write_bytes(data.replace(point, bytes(bad)))
    one_line_error(run_cli(["fip", "verify", "--fip", str(tampered)]), match="public key")
    pkh = json.loads(ok(run_cli(["stm32", "pkh", "--key", uri, "--pin-file", str(softhsm.pin_file), "--json"],
                                softhsm)))["hash"]
    one_line_error(run_cli(["fip", "verify", "--fip", str(tampered), "--pkh", pkh]), match="public key")


def test_pin_env_is_not_inherited_by_children(softhsm, tmp_path):
    """--pin-env: the variable leaves the environment once read; fiptool, which fip sign starts
    afterwards, does not see it (a pass-through wrapper records fiptool's environment)."""
    bindir = tmp_path / "bin"
    bindir.mkdir()
    seen = tmp_path / "fiptool.env"
    real = shutil.which("fiptool")
    wrapper = bindir / "fiptool"
    wrapper.write_text(f'#!/bin/sh\nenv > "{seen}"\nexec "{real}" "$@"\n')
    wrapper.chmod(0o755)
    env = {"CI_TOKEN_PIN": softhsm.pin, "PATH": f"{bindir}:{os.environ['PATH']}"}
    _signed_fip(softhsm, tmp_path, "--pin-env", "CI_TOKEN_PIN", env=env)
    recorded = seen.read_text()
    assert "PATH=" in recorded and "CI_TOKEN_PIN" not in recorded and softhsm.pin not in recorded


def test_certificate_of_an_unknown_version(softhsm, tmp_path):
    """X.509 version 6 (cryptography's InvalidVersion, not a ValueError), inside the FIP and as
    the --rot-pubkey certificate: one line each."""
    from segway_sign.formats.tfa import fip
    _, out = _signed_fip(softhsm, tmp_path, "--pin-file", str(softhsm.pin_file))
    v3, v6 = bytes.fromhex("a003020102"), bytes.fromhex("a003020105")  # [0] EXPLICIT INTEGER 2 / 5
    data = out.read_bytes()
    assert data.count(v3) == 6
    tampered = tmp_path / "tampered.bin"
    tampered.write_bytes(data.replace(v3, v6))
    one_line_error(run_cli(["fip", "verify", "--fip", str(tampered)]), match="certificate")
    cert = tmp_path / "rot.der"
    cert.write_bytes(fip.parse(data).by_name()["trusted_key_cert"].replace(v3, v6))
    one_line_error(run_cli(["fip", "verify", "--fip", str(out), "--rot-pubkey", str(cert)]),
                   match="not a PEM/DER public key or certificate")
