"""Every output's missing parent directories are created (on a fresh clone `out/` does not exist);
a parent that cannot be a directory is refused with one line before anything is signed."""

from __future__ import annotations

import json

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from tests.fit_fixtures import EPOCH, make_unsigned_fit
from tests.helpers import ok, one_line_error, run_cli


def _public_pems(tmp_path, kind: str, n: int) -> list[str]:
    paths = []
    for i in range(n):
        key = rsa.generate_private_key(65537, 2048) if kind == "rsa" else ec.generate_private_key(ec.SECP256R1())
        path = tmp_path / f"{kind}{i}.pub.pem"
        path.write_bytes(key.public_key().public_bytes(serialization.Encoding.PEM,
                                                       serialization.PublicFormat.SubjectPublicKeyInfo))
        paths.append(str(path))
    return paths


def test_hab_and_ahab_srk_create_output_dirs(tmp_path):
    table, fuse = tmp_path / "out" / "hab" / "table.bin", tmp_path / "out" / "fuse" / "fuse.bin"
    ok(run_cli(["hab", "srk", "--keys", ",".join(_public_pems(tmp_path, "rsa", 4)), "--out-table", str(table),
                "--out-fuse", str(fuse)]))
    assert table.is_file() and fuse.is_file()
    ahab_table = tmp_path / "new" / "a" / "b" / "ahab.bin"
    ok(run_cli(["ahab", "srk", "--keys", ",".join(_public_pems(tmp_path, "p256", 4)), "--out-table",
                str(ahab_table)]))
    assert ahab_table.is_file()


def test_fit_sign_creates_output_dirs(softhsm, tmp_path):
    uri = softhsm.generate("rsa2048", "segway-fit")
    out = tmp_path / "deploy" / "signed" / "fit.itb"
    res = run_cli(["fit", "sign", "--key", uri, "--in", str(make_unsigned_fit(tmp_path / "fit")), "--out", str(out),
                   "--pin-file", str(softhsm.pin_file), "--json"], softhsm, env={"SOURCE_DATE_EPOCH": EPOCH})
    assert json.loads(ok(res))["output"] == str(out) and out.is_file()


@pytest.mark.parametrize("under", ["file", "file/below"])
def test_a_parent_that_is_a_file_is_refused(tmp_path, under):
    (tmp_path / "file").write_bytes(b"x")
    table = tmp_path / under / "table.bin"
    res = run_cli(["hab", "srk", "--keys", ",".join(_public_pems(tmp_path, "rsa", 1)), "--out-table", str(table)])
    err = one_line_error(res, 1, "not a directory")
    assert f"output directory {table.parent}" in err
    if under != "file":
        assert f"cannot be created: {tmp_path / 'file'} is not a directory" in err


def test_token_init_dev_creates_its_dir(tmp_path):
    res = run_cli(["token", "init-dev", "--dir", str(tmp_path / "a" / "b" / "hsm"), "--json"])
    assert json.loads(ok(res))["dir"] == str(tmp_path / "a" / "b" / "hsm")
