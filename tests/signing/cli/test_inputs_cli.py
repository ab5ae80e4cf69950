"""Artifacts that are not regular files (a FIFO, a device, a directory) are refused at once, in one
line, by every command that reads one: nothing waits on a FIFO without a writer or reads a device
without end."""

from __future__ import annotations

import os
import time

import pytest

from tests.helpers import one_line_error, run_cli

KEY = "pkcs11:token=absent;object=never-opened"


def _commands(art: str, tmp: str) -> dict[str, list[str]]:
    out = f"{tmp}/out.bin"
    return {
        "fit sign": ["fit", "sign", "--key", KEY, "--in", art, "--out", out],
        "fit verify --in": ["fit", "verify", "--dtb", f"{tmp}/ok.bin", "--in", art],
        "fit verify --dtb": ["fit", "verify", "--dtb", art, "--in", f"{tmp}/ok.bin"],
        "fit add-pubkey": ["fit", "add-pubkey", "--key", KEY, "--dtb", art, "--out", out, "--key-name-hint", "k"],
        "fit add-pubkey --key": ["fit", "add-pubkey", "--key", art, "--dtb", f"{tmp}/ok.bin", "--out", out,
                                 "--key-name-hint", "k"],
        "fip sign": ["fip", "sign", "--rot-key", KEY, "--fip", art, "--out", out],
        "fip sign --nt-fw": ["fip", "sign", "--rot-key", KEY, "--nt-fw", art, "--out", out],
        "fip verify": ["fip", "verify", "--fip", art],
        "fip verify --rot-pubkey": ["fip", "verify", "--fip", f"{tmp}/ok.bin", "--rot-pubkey", art],
        "fip verify --pkh-file": ["fip", "verify", "--fip", f"{tmp}/ok.bin", "--pkh-file", art],
        "stm32 sign": ["stm32", "sign", "--key", KEY, "--in", art, "--out", out],
        "stm32 verify": ["stm32", "verify", "--in", art],
        "stm32 verify --pkh-file": ["stm32", "verify", "--in", f"{tmp}/ok.bin", "--pkh-file", art],
        "pki init": ["pki", "init", art, "--out", f"{tmp}/pki"],
    }


@pytest.fixture
def artifacts(tmp_path):
    (tmp_path / "ok.bin").write_bytes(b"\0" * 64)
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    directory = tmp_path / "dir"
    directory.mkdir()
    return {"FIFO": str(fifo), "character device": "/dev/zero", "directory": str(directory)}


@pytest.mark.parametrize("kind", ["FIFO", "character device", "directory"])
@pytest.mark.parametrize("command", list(_commands("A", "T")))
def test_non_regular_artifact_is_refused_at_once(tmp_path, artifacts, kind, command):
    args = _commands(artifacts[kind], str(tmp_path))[command]
    start = time.monotonic()
    res = run_cli(args, timeout=60)
    err = one_line_error(res, match=kind)
    assert "not a regular file" in err
    assert time.monotonic() - start < 30
    assert not (tmp_path / "out.bin").exists() and not (tmp_path / "pki").exists()


def test_symlink_to_a_regular_file_is_read(tmp_path):
    """The check follows symlinks: a link to a regular file is a normal input."""
    (tmp_path / "junk.bin").write_bytes(b"\0" * 64)
    (tmp_path / "link.bin").symlink_to(tmp_path / "junk.bin")
    one_line_error(run_cli(["stm32", "verify", "--in", str(tmp_path / "link.bin")]), match="not an STM32 image")
