"""What a fuzz target declares, and the workshop that builds the valid inputs.

A ``Target`` is one command that parses input: its valid inputs (written by ``build`` into a case
directory, signed by a real SoftHSM token), the command line run on a case directory, and for each
file the command reads (``Input``):

- ``device``: the byte ranges of the valid file the device reads and acts on (the boot ROM, SPL,
  U-Boot, TF-A, the kernel, the initramfs, or the tool that flashes a release). An input accepted by
  the command must equal the valid one on all of them; only bytes outside may differ. Or a
  ``DeviceView``, for formats whose structure decides what is read. ``None`` for an input that is
  not a signed artifact (a plan, a trust anchor, a PIN file): any content may be accepted, and only
  the rules every input obeys apply (no traceback, no hang, one-line errors).
- ``fields``: where its length/size/offset fields are (the mutator writes huge values there);
- ``hot``: ranges to hit more often than the rest (headers, metadata — not the payload's bytes);
- ``text``: "yaml", "json" or "env" for text inputs;
- ``canonical(valid, data)``: what the device makes of the bytes before acting on them, where several
  encodings mean the same to it (e.g. TF-A only tests a FIP's serial number for zero); applied to
  both the valid and the mutated input before their device bytes are compared (``valid`` gives the
  positions).

A format added later joins the test with one module declaring its targets (see ``__init__.py``).
"""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from tests.signing.fuzz.mutator import Field, Range

DeviceBytes = Callable[[bytes], list[Range]]


@dataclass(frozen=True)
class DeviceView:
    """Where byte ranges cannot say it (a tree whose lengths and names decide what is read): what
    the device acts on, as a value computed from the file the way the device reads it. An accepted
    input must give the valid input's view."""

    read: Callable[[bytes], object]


def all_bytes(data: bytes) -> list[Range]:
    """Every byte of the file is read and acted on."""
    return [(0, len(data))]


def no_fields(data: bytes) -> list[Field]:
    return []


@dataclass(frozen=True)
class Input:
    path: str  # relative to the case directory
    device: DeviceBytes | DeviceView | None
    fields: Callable[[bytes], list[Field]] = no_fields
    hot: Callable[[bytes], list[Range]] = all_bytes
    text: str | None = None
    weight: int = 1  # share of the target's cases that mutate this input
    canonical: Callable[[bytes, bytes], bytes] | None = None
    # What else stands in for the file (always through the real CLI): each must be refused at once.
    specials: tuple[str, ...] = ("fifo", "device", "directory", "missing")


@dataclass(frozen=True)
class Target:
    name: str  # the command as a user types it, plus what is mutated: "fit verify", "hab verify imx8m"
    inputs: tuple[Input, ...]
    build: Callable[["Shop", Path], None]  # writes the valid inputs into an empty case directory
    argv: Callable[["Shop", Path], list[str]]  # the command line for a case directory
    token: bool = False  # the command signs: the token must be reachable in-process too
    share: float = 1.0  # of SEGWAY_FUZZ_CASES: less where an accepted case is slow (key generation)


@dataclass
class Shop:
    """Shared by every target of a run: one SoftHSM token, its keys, files the targets reuse."""

    root: Path
    token: object  # helpers.SoftHsmToken
    _keys: dict[str, str] = field(default_factory=dict)
    _made: dict[str, object] = field(default_factory=dict)

    @property
    def pin(self) -> list[str]:
        return ["--pin-file", str(self.token.pin_file)]

    def env(self) -> dict[str, str]:
        """The environment of a command that may use the token."""
        return {**self.token.env, "SEGWAY_PKCS11_MODULE": self.token.module, "SOURCE_DATE_EPOCH": "1704067200"}

    def key(self, kind: str, label: str) -> str:
        """A key generated in the token (once per label); its URI."""
        if label not in self._keys:
            self._keys[label] = self.token.generate(kind, label)
        return self._keys[label]

    def once(self, name: str, make: Callable[[Path], object]) -> object:
        """Something several targets share (a PKI, an unsigned image), made on first use in its own
        directory under the shop."""
        if name not in self._made:
            where = self.root / "shared" / name
            shutil.rmtree(where, ignore_errors=True)  # what a failed attempt left
            where.mkdir(parents=True)
            self._made[name] = make(where)
        return self._made[name]

    def token_certs(self) -> tuple[dict[str, str], Path]:
        """The verity (RSA) and release manifest (P-256) keys in the token with self-signed
        certificates, as the release tests make them: key name → URI, and the certificates' directory."""
        def make(where: Path):
            from tests.signing.release import release_fixtures as fixtures
            return fixtures.token_certs(self.token, where), where
        return self.once("token-certs", make)

    def cli(self, args: list[str], env: dict | None = None) -> str:
        """Run the CLI (to make a valid input), in this process: it must succeed. Its stdout."""
        from tests.signing.fuzz.harness import in_process
        self.token.activate()
        res = in_process(args, {**self.env(), **(env or {})}, timeout=600)
        if res.code != 0:
            raise RuntimeError(f"segway-sign {' '.join(args)} failed: {res.traceback or res.stderr}")
        return res.stdout


def run(args: list[str], cwd: Path, **kw) -> subprocess.CompletedProcess:
    """A build tool (mkimage, fiptool, dtc …) that must succeed."""
    return subprocess.run(args, cwd=cwd, check=True, capture_output=True, timeout=300, **kw)
