"""``segway-sign ahab``: SRK table/hash and container signing from token keys, checked with SPSDK and srktool."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
import yaml

from helpers import REPO, ok, one_line_error, run_cli

NXPIMAGE = Path(os.environ.get("SEGWAY_NXPIMAGE", REPO / ".venv" / "oracle-spsdk" / "bin" / "nxpimage"))
FAMILY = "mimx9352"




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
    assert signed["containers"][0]["srk_index"] == 2
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

