"""``segway-sign fip --cot generic``: TF-A's generic TBBR chain with every key in the token, run as a
user would, the FIP read back with fiptool, every tampering refused by ``fip verify`` in one line."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization

from tests.helpers import ok, one_line_error, run_cli

IMAGES = ["tb-fw", "soc-fw", "tos-fw", "tos-fw-extra1", "tos-fw-extra2", "nt-fw", "tb-fw-config", "nt-fw-config"]
KEY_OPTIONS = ["rot-key", "trusted-world-key", "non-trusted-world-key", "soc-fw-key", "tos-fw-key", "nt-fw-key"]
CERT_OPTIONS = {"tb-fw-cert": "tb_fw_cert", "trusted-key-cert": "trusted_key_cert",
                "soc-fw-key-cert": "soc_fw_key_cert", "soc-fw-cert": "soc_fw_content_cert",
                "tos-fw-key-cert": "tos_fw_key_cert", "tos-fw-cert": "tos_fw_content_cert",
                "nt-fw-key-cert": "nt_fw_key_cert", "nt-fw-cert": "nt_fw_content_cert"}


def images(tmp_path: Path) -> dict[str, Path]:
    out = {}
    for i, name in enumerate(IMAGES):
        out[name] = tmp_path / f"{name}.bin"
        out[name].write_bytes(os.urandom(1800 + 13 * i))
    return out


def token_keys(tok, prefix: str = "fip") -> list[str]:
    """--rot-key URI --trusted-world-key URI ...: six P-256 keys made in the token."""
    args = []
    for option in KEY_OPTIONS:
        args += [f"--{option}", tok.generate("p256", f"{prefix}-{option}")]
    return args


def unsigned_fip(tmp_path: Path, imgs: dict[str, Path]) -> Path:
    out = tmp_path / "unsigned.fip"
    subprocess.run(["fiptool", "create", *[a for n, p in imgs.items() for a in (f"--{n}", str(p))], str(out)],
                   check=True, capture_output=True, timeout=60)
    return out


def fiptool(*args: str) -> str:
    res = subprocess.run(["fiptool", *args], capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    return res.stdout


def rotpk_hash(tok, uri: str) -> str:
    spki = tok.open_key(uri).public_key().public_bytes(serialization.Encoding.DER,
                                                       serialization.PublicFormat.SubjectPublicKeyInfo)
    return hashlib.sha256(spki).hexdigest()


@pytest.fixture
def signed(softhsm, tmp_path):
    """A FIP signed from the separate images with six token keys; (key args, FIP, images, ROTPK hash)."""
    keys = token_keys(softhsm)
    imgs = images(tmp_path)
    out = tmp_path / "fip.bin"
    ok(run_cli(["fip", "sign", "--cot", "generic", *keys, "--pin-file", str(softhsm.pin_file),
                *[a for n, p in imgs.items() for a in (f"--{n}", str(p))], "--out", str(out)], softhsm))
    return keys, out, imgs, rotpk_hash(softhsm, keys[1])


def test_sign_unsigned_fip_and_verify(softhsm, tmp_path):
    keys = token_keys(softhsm)
    imgs = images(tmp_path)
    unsigned = unsigned_fip(tmp_path, imgs)
    out, certs = tmp_path / "signed.fip", tmp_path / "certs"
    report = json.loads(ok(run_cli(["fip", "sign", "--cot", "generic", *keys, "--pin-file", str(softhsm.pin_file),
                                    "--fip", str(unsigned), "--out", str(out), "--certs-dir", str(certs),
                                    "--tfw-nvctr", "1", "--ntfw-nvctr", "1", "--json"], softhsm)))
    assert report["cot"] == "generic" and report["unauthenticated"] == []
    assert report["nv_counters"] == {"trusted_nvctr": 1, "non_trusted_nvctr": 1}
    rotpk = rotpk_hash(softhsm, keys[1])
    assert report["rot_pkh"] == rotpk
    info = fiptool("info", str(out))
    for name in [*IMAGES, *CERT_OPTIONS]:
        assert f'cmdline="--{name}"' in info, name
    assert sorted(p.name for p in certs.iterdir()) == sorted(f"{c}.crt" for c in CERT_OPTIONS.values())

    # The ROTPK hash as hex, as TF-A's ROTPK_HASH file (32 bytes), and the ROT public key.
    text = ok(run_cli(["fip", "verify", "--cot", "generic", "--fip", str(out), "--rot-pkh", rotpk]))
    assert text.startswith(f"OK {out}\nROTPK hash {rotpk}\n")
    (tmp_path / "rotpk_hash.bin").write_bytes(bytes.fromhex(rotpk))
    ok(run_cli(["fip", "verify", "--cot", "generic", "--fip", str(out), "--rot-pkh", str(tmp_path / "rotpk_hash.bin")]))
    pub = tmp_path / "rot.pem"
    pub.write_bytes(softhsm.open_key(keys[1]).public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
    ok(run_cli(["fip", "verify", "--cot", "generic", "--fip", str(out), "--rot-key", str(pub)]))
    # No anchor: every signature checks, but nothing says the ROT key is the device's: exit 3.
    res = run_cli(["fip", "verify", "--cot", "generic", "--fip", str(out)])
    assert res.returncode == 3 and res.stdout.decode().startswith("OK (signature only: no trust anchor given)")
    # The STM32MP1 chain is not in this FIP.
    one_line_error(run_cli(["fip", "verify", "--fip", str(out)]), match="missing certificate")


def flip_entry(fip_path: Path, name: str, where, tmp_path: Path) -> Path:
    """Unpack with fiptool, flip one byte of entry ``name`` (fiptool's file name), pack it back."""
    outdir = tmp_path / f"unpacked-{name}"
    outdir.mkdir()
    fiptool("unpack", "--out", str(outdir), str(fip_path))
    path = outdir / f"{name}.bin"
    data = bytearray(path.read_bytes())
    data[where(len(data))] ^= 0x01
    path.write_bytes(bytes(data))
    tampered = tmp_path / f"tampered-{name}.fip"
    fiptool("create", *[a for p in sorted(outdir.iterdir()) for a in (f"--{p.stem}", str(p))], str(tampered))
    return tampered


def test_every_tampering_refused(signed, tmp_path):
    _, out, _, rotpk = signed
    base = ["fip", "verify", "--cot", "generic", "--rot-pkh", rotpk, "--fip"]
    ok(run_cli([*base, str(out)]))
    for name in IMAGES:  # a byte of each image
        one_line_error(run_cli([*base, str(flip_entry(out, name, lambda n: n // 2, tmp_path))]),
                       match="does not match")
    for name in CERT_OPTIONS:  # a byte of each certificate's signature (its last bytes)
        one_line_error(run_cli([*base, str(flip_entry(out, name, lambda n: n - 3, tmp_path))]),
                       match="signature does not verify")


def test_foreign_content_certificate_rot_key_and_missing_image_refused(softhsm, signed, tmp_path):
    keys, out, imgs, rotpk = signed
    pin = ["--pin-file", str(softhsm.pin_file)]
    base = ["fip", "verify", "--cot", "generic", "--rot-pkh", rotpk, "--fip"]
    # The same images signed with another BL33 content key: its content certificate swapped in.
    other_nt = softhsm.generate("p256", "other-nt-fw")
    foreign_keys = list(keys)
    foreign_keys[foreign_keys.index("--nt-fw-key") + 1] = other_nt
    foreign, certs = tmp_path / "foreign.fip", tmp_path / "foreign-certs"
    ok(run_cli(["fip", "sign", "--cot", "generic", *foreign_keys, *pin, "--fip", str(out), "--out", str(foreign),
                "--certs-dir", str(certs)], softhsm))
    swapped = tmp_path / "swapped.fip"
    subprocess.run(["cp", str(out), str(swapped)], check=True)
    fiptool("update", "--nt-fw-cert", str(certs / "nt_fw_content_cert.crt"), str(swapped))
    one_line_error(run_cli([*base, str(swapped)]), match="nt_fw_content_cert subject key is not the key")

    # The whole chain re-signed with another ROT key (the rest unchanged).
    other_rot = softhsm.generate("p256", "other-rot")
    resigned_keys = list(keys)
    resigned_keys[1] = other_rot
    resigned = tmp_path / "resigned.fip"
    ok(run_cli(["fip", "sign", "--cot", "generic", *resigned_keys, *pin, "--fip", str(out), "--out", str(resigned)],
               softhsm))
    one_line_error(run_cli([*base, str(resigned)]), match="ROTPK hash")

    # BL31 missing: fiptool remove.
    missing = tmp_path / "missing.fip"
    subprocess.run(["cp", str(out), str(missing)], check=True)
    fiptool("remove", "--soc-fw", str(missing))
    one_line_error(run_cli([*base, str(missing)]), match="soc_fw image is missing")


def test_usage_errors(softhsm, tmp_path):
    keys = token_keys(softhsm)
    imgs = images(tmp_path)
    pin = ["--pin-file", str(softhsm.pin_file)]
    out = tmp_path / "out.fip"
    img_args = [a for n, p in imgs.items() for a in (f"--{n}", str(p))]
    one_line_error(run_cli(["fip", "sign", "--cot", "generic", *keys[:-2], *pin, *img_args, "--out", str(out)],
                           softhsm), code=2, match="--nt-fw-key")
    one_line_error(run_cli(["fip", "sign", *keys, *pin, "--tos-fw", str(imgs["tos-fw"]), "--nt-fw",
                            str(imgs["nt-fw"]), "--out", str(out)], softhsm), code=2, match="made fresh")
    one_line_error(run_cli(["fip", "sign", "--rot-key", keys[1], *pin, *img_args, "--out", str(out)], softhsm),
                   code=2, match="does not cover --tb-fw")
    no_bl33 = [a for n, p in imgs.items() if n != "nt-fw" for a in (f"--{n}", str(p))]
    one_line_error(run_cli(["fip", "sign", "--cot", "generic", *keys, *pin, *no_bl33, "--out", str(out)], softhsm),
                   match="nt_fw")
    assert not out.exists()
    one_line_error(run_cli(["fip", "verify", "--cot", "generic", "--fip", str(imgs["nt-fw"])]), match="not a FIP")
    one_line_error(run_cli(["fip", "verify", "--cot", "generic", "--fip", str(imgs["nt-fw"]), "--rot-pkh", "12"]),
                   code=2, match="32 bytes")
