"""segway-sign verity sign/verify as a user runs them, with keys inside a token (direct and p11-kit)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from helpers import run_cli

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "release"))
from release_fixtures import token_certs  # noqa: E402


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
    (["--in", "{tmp}/missing.img"], "--in {tmp}/missing.img: no such file"),
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
