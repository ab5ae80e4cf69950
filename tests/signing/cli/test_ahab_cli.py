"""``segway-sign ahab``: SRK table/hash and container signing from token keys, checked with SPSDK and srktool."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
import yaml

from tests.helpers import REPO, ok, one_line_error, run_cli

NXPIMAGE = Path(os.environ.get("SEGWAY_NXPIMAGE", REPO / ".venv" / "oracle-spsdk" / "bin" / "nxpimage"))
FAMILY = "mimx9352"
# Version-0 SGK certificates are read by spsdk 2.2 only (see tests/signing/formats/test_ahab.py).
NXPIMAGE_V1CERT = Path(os.environ.get("SEGWAY_NXPIMAGE_V1CERT",
                                      REPO / ".venv" / "oracle-spsdk-2.2" / "bin" / "nxpimage"))




def nxpimage(cwd: Path, *args: str) -> subprocess.CompletedProcess:
    if not NXPIMAGE.exists():
        pytest.fail(f"SPSDK oracle missing: python3 -m venv .venv/oracle-spsdk && "
                    f".venv/oracle-spsdk/bin/pip install spsdk==3.12.0 (looked for {NXPIMAGE})")
    env = dict(os.environ, HOME=str(cwd))
    return subprocess.run([str(NXPIMAGE), *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


def unsigned_image(root: Path) -> Path:
    (root / "app.bin").write_bytes(os.urandom(60_000))
    config = {"family": FAMILY, "revision": "latest", "target_memory": "standard", "output": "unsigned.bin",
              "output_format": "bin",
              "containers": [{"container": {"srk_set": "none", "used_srk_id": 0, "srk_revoke_mask": "0x00",
                                            "fuse_version": 0, "sw_version": 0,
                                            "images": [{"image_path": "app.bin", "load_address": "0x2049A000",
                                                        "entry_point": "0x2049A000", "image_type": "executable",
                                                        "core_id": "cortex-a55", "hash_type": "sha256"}]}}]}
    (root / "unsigned.yaml").write_text(yaml.safe_dump(config))
    res = nxpimage(root, "ahab", "export", "-c", "unsigned.yaml")
    assert res.returncode == 0, res.stdout + res.stderr
    return root / "unsigned.bin"


@pytest.mark.slow
def test_ahab_flow_with_token_keys(softhsm, tmp_path):
    token = softhsm  # both transports are covered by tests/signing/formats/test_ahab.py
    pin = ["--pin-file", str(token.pin_file)]
    srks = [token.generate("p256", f"SRK{i}") for i in range(1, 5)]
    table, fuse = tmp_path / "srk_table.bin", tmp_path / "srk_hash.bin"
    srk = json.loads(ok(run_cli(["ahab", "srk", "--keys", ",".join(srks), "--out-table", str(table), "--out-fuse",
                                 str(fuse), "--soc", "imx93", "--json", *pin], token)))
    assert srk["hash_algorithm"] == "sha256" and len(srk["uboot_commands"]) == 8
    assert srk["srk_hash"] == fuse.read_bytes().hex()
    assert fuse.stat().st_size == 32

    image = unsigned_image(tmp_path)
    before = image.read_bytes()
    out = tmp_path / "signed.bin"
    args = ["ahab", "sign", "--in", str(image), "--out", str(out), "--srk-table", str(table), "--srk-index", "3",
            "--key", srks[2], *pin]
    signed = json.loads(ok(run_cli([*args, "--json"], token)))
    assert image.read_bytes() == before
    assert signed["containers"][0]["srk_index"] == 3  # numbered as --srk-index
    verified = json.loads(ok(run_cli(["ahab", "verify", "--in", str(out), "--srk-table", str(table), "--json"])))
    assert verified["containers"][0]["srk_index"] == 3
    res = nxpimage(tmp_path, "ahab", "verify", "-f", FAMILY, "-b", str(out))
    assert res.returncode == 0 and "Overall  result: Succeeded" in res.stdout, res.stdout[-3000:]
    # SPSDK prints the SRK hash fuse values it expects: the words `ahab srk` printed.
    full = res.stdout
    for word in srk["fuse_words"]:
        assert f"Value: {word}".lower() in full.lower(), word
    text = ok(run_cli(["ahab", "verify", "--in", str(out), "--srk-table", str(table)]))
    assert text.startswith("OK") and "SRK 3" in text

    # Errors: wrong key for the index, existing output, tampered container.
    never = tmp_path / "never.bin"
    wrong = ["ahab", "sign", "--in", str(image), "--out", str(never), "--srk-table", str(table), "--srk-index", "2",
             "--key", srks[2], *pin]
    one_line_error(run_cli(wrong, token), 2, "not SRK 2")
    assert not never.exists()
    one_line_error(run_cli(args, token), 1, "exists")
    bad = bytearray(out.read_bytes())
    bad[8] ^= 1
    (tmp_path / "bad.bin").write_bytes(bad)
    one_line_error(run_cli(["ahab", "verify", "--in", str(tmp_path / "bad.bin")]), 1, "does not verify")



@pytest.mark.slow
def test_ahab_sign_with_sgk(softhsm, tmp_path):
    token = softhsm
    pin = ["--pin-file", str(token.pin_file)]
    srks = [token.generate("p384", f"SRK{i}") for i in range(1, 5)]
    sgk = token.generate("p384", "SGK")
    table = tmp_path / "srk_table.bin"
    ok(run_cli(["ahab", "srk", "--keys", ",".join(srks), "--out-table", str(table), "--ca", *pin], token))
    image = unsigned_image(tmp_path)
    out = tmp_path / "signed.bin"
    base = ["ahab", "sign", "--in", str(image), "--out", str(out), "--srk-table", str(table), "--srk-index", "4",
            "--key", srks[3], *pin]
    signed = json.loads(ok(run_cli([*base, "--sgk-key", sgk, "--sgk-permissions", "container",
                                    "--sgk-uuid", "00112233-4455-6677-8899-aabbccddeeff", "--json"], token)))
    container = signed["containers"][0]
    assert container["sgk"] and container["sgk_uuid"] == "00112233445566778899aabbccddeeff"
    assert container["srk_index"] == 4 and container["digest"] == "sha384"
    if not NXPIMAGE_V1CERT.exists():
        pytest.fail(f"SPSDK 2.2 oracle missing: python3 -m venv .venv/oracle-spsdk-2.2 && "
                    f".venv/oracle-spsdk-2.2/bin/pip install spsdk==2.2.1 (looked for {NXPIMAGE_V1CERT})")
    res = subprocess.run([str(NXPIMAGE_V1CERT), "ahab", "verify", "-f", "mx93", "-b", str(out)], cwd=tmp_path,
                         env=dict(os.environ, HOME=str(tmp_path)), capture_output=True, text=True, timeout=300)
    assert res.returncode == 0 and "Signed source(Succeeded): Certificate image key" in res.stdout, res.stdout[-3000:]
    assert "(Error)" not in res.stdout, res.stdout[-3000:]
    text = ok(run_cli(["ahab", "verify", "--in", str(out), "--srk-table", str(table)]))
    assert text.startswith("OK") and "SGK certified by SRK 4" in text

    never = tmp_path / "never.bin"
    other = ["ahab", "sign", "--in", str(image), "--out", str(never), "--srk-table", str(table), "--srk-index", "4",
             "--key", srks[3], *pin]
    one_line_error(run_cli([*other, "--sgk-uuid", "00" * 16], token), 2, "need --sgk-key")
    one_line_error(run_cli([*other, "--sgk-key", sgk, "--sgk-permissions", "debug"], token), 2, "permission")
    one_line_error(run_cli([*other, "--sgk-key", sgk, "--sgk-permissions", "life-cycle"], token), 2, "'container'")
    assert not never.exists()
    # A flipped byte in the certificate's SRK signature: refused by our verify.
    bad = bytearray(out.read_bytes())
    sig_blk = int.from_bytes(bad[12:14], "little")
    cert = sig_blk + int.from_bytes(bad[sig_blk + 4 : sig_blk + 6], "little")
    bad[cert + int.from_bytes(bad[cert + 1 : cert + 3], "little") - 3] ^= 1
    (tmp_path / "bad.bin").write_bytes(bad)
    one_line_error(run_cli(["ahab", "verify", "--in", str(tmp_path / "bad.bin")]), 1, "certificate signature")


def refused(res: subprocess.CompletedProcess, match: str = "") -> str:
    """Refused without a traceback: one error line (or click's usage message)."""
    err = res.stderr.decode()
    assert res.returncode != 0 and "Traceback" not in err and match in err, (res.returncode, err)
    assert (len(err.strip().splitlines()) == 1 and err.startswith("segway-sign: error: ")) \
        or err.startswith("Usage:"), err
    return err


def test_ahab_verify_refuses_reserved_bytes_and_odd_inputs(tmp_path):
    """Signed in-process with software SRKs (the token path is covered above): the CLI refuses a
    non-zero signature-header type/reserved byte (0x1dc-0x1df with one image) with one line, and
    inputs that are empty, cut short, random, or not regular files at once."""
    from cryptography.hazmat.primitives.asymmetric import ec

    from segway_sign.formats import ahab

    keys = [ec.generate_private_key(ec.SECP256R1()) for _ in range(4)]
    table = ahab.srk_table([k.public_key() for k in keys])
    (tmp_path / "table.bin").write_bytes(table)
    signed = ahab.sign_container(unsigned_image(tmp_path).read_bytes(), 0, table, 0, keys[0])
    good = tmp_path / "signed.bin"
    good.write_bytes(signed)
    args = ["ahab", "verify", "--srk-table", str(tmp_path / "table.bin"), "--in"]
    assert ok(run_cli([*args, str(good)])).startswith("OK")
    for where, message in [(0x1dc, "type and reserved bytes"), (0x1dd, "type and reserved bytes"),
                           (0x1de, "type and reserved bytes"), (0x1df, "type and reserved bytes"),
                           (0x1d8, "signature structure version"), (0x0e, "reserved header bytes"),
                           (0x9c, "key identifier")]:
        bad = bytearray(signed)
        bad[where] ^= 0x01
        (tmp_path / "bad.bin").write_bytes(bad)
        one_line_error(run_cli([*args, str(tmp_path / "bad.bin")], timeout=60), 1, message)
    os.mkfifo(tmp_path / "fifo")
    (tmp_path / "empty.bin").write_bytes(b"")
    (tmp_path / "short.bin").write_bytes(signed[:0x1e0])
    (tmp_path / "random.bin").write_bytes(os.urandom(70_000))
    for path in ("empty.bin", "short.bin", "random.bin", "fifo", "/dev/zero", str(tmp_path)):
        refused(run_cli([*args, str(tmp_path / path)], timeout=30))
    refused(run_cli(["ahab", "verify", "--srk-table", str(tmp_path / "fifo"), "--in", str(good)], timeout=30),
            "not a regular file")
