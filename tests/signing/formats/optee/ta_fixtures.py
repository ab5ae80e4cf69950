"""Inputs and the oracle for the OP-TEE TA tests: a small aarch64 TA-shaped ELF (a ``.ta_head``
section holding its UUID, as OP-TEE's TA dev kit links it) and upstream's ``sign_encrypt.py`` from
Debian's pinned OP-TEE source package (never committed here), run with Debian's python3."""

from __future__ import annotations

import subprocess
import uuid
from pathlib import Path

TA_UUID = uuid.UUID("8aaaf200-2450-11e4-abe2-0002a5d5c51b")  # OP-TEE's hello-world example TA
SYSTEM_PYTHON = "/usr/bin/python3"  # with python3-cryptography, as OP-TEE's build uses it

_TA_SOURCE = """
struct tee_uuid {{ unsigned int a; unsigned short b, c; unsigned char d[8]; }};
struct ta_head {{ struct tee_uuid uuid; unsigned int stack_size, flags; unsigned long long depr_entry; }};
const struct ta_head ta_head __attribute__((section(".ta_head"), used)) =
    {{ {{ 0x{a:08x}, 0x{b:04x}, 0x{c:04x}, {{ {d} }} }}, 2048, 0, ~0ULL }};
int ta_entry(int x) {{ return x * {mult} + 1; }}
"""


def optee_tree() -> Path:
    """Debian's pinned OP-TEE OS source tree (fetched and checked by the QEMU harness's debsrc)."""
    from segway_dev import debsrc
    return debsrc.source_tree("optee-os")


def sign_encrypt() -> Path:
    return optee_tree() / "scripts" / "sign_encrypt.py"


def default_key() -> Path:
    """Upstream's published TA key (what Debian's OP-TEE binaries check TAs with)."""
    return optee_tree() / "keys" / "default.pem"


def build_ta_elf(where: Path, ta_uuid: uuid.UUID = TA_UUID, mult: int = 3) -> Path:
    """A stripped aarch64 shared object with a ``.ta_head`` section, like <uuid>.stripped.elf."""
    where.mkdir(parents=True, exist_ok=True)
    f = ta_uuid.fields
    node = ta_uuid.bytes[8:]
    src = where / f"{ta_uuid}.c"
    src.write_text(_TA_SOURCE.format(a=f[0], b=f[1], c=f[2], d=", ".join(f"0x{x:02x}" for x in node), mult=mult))
    elf = where / f"{ta_uuid}.elf"
    subprocess.run(["aarch64-linux-gnu-gcc", "-O2", "-fPIC", "-shared", "-nostdlib", "-Wl,--build-id=none",
                    "-Wl,-z,max-page-size=0x1000", "-o", str(elf), str(src)], check=True, capture_output=True)
    stripped = where / f"{ta_uuid}.stripped.elf"
    subprocess.run(["aarch64-linux-gnu-strip", "-o", str(stripped), str(elf)], check=True, capture_output=True)
    return stripped


def oracle(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    """Run upstream's sign_encrypt.py; the completed process (not checked)."""
    return subprocess.run([SYSTEM_PYTHON, str(sign_encrypt()), *args], capture_output=True, text=True,
                          timeout=120, cwd=cwd)


def oracle_sign(elf: Path, key: Path, out: Path, ta_uuid: uuid.UUID = TA_UUID, version: int = 0,
                algo: str = "TEE_ALG_RSASSA_PKCS1_V1_5_SHA256") -> bytes:
    res = oracle("sign-enc", "--key", str(key), "--uuid", str(ta_uuid), "--ta-version", str(version),
                 "--algo", algo, "--in", str(elf), "--out", str(out))
    assert res.returncode == 0, res.stdout + res.stderr
    return out.read_bytes()


def oracle_verify(ta: Path, key: Path, ta_uuid: uuid.UUID = TA_UUID) -> subprocess.CompletedProcess:
    return oracle("verify", "--key", str(key), "--uuid", str(ta_uuid), "--in", str(ta))
