"""Private apt configurations under the cache: the harness downloads Debian packages and sources
without touching the machine's apt sources, lists or dpkg state."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Iterable

ARCHIVE = "http://deb.debian.org/debian"
KEYRING = "/usr/share/keyrings/debian-archive-keyring.gpg"


def options(apt_dir: Path, *, arch: str | None = None, own_sources: bool = True) -> list[str]:
    """apt options for lists and downloads under ``apt_dir`` (and its own ``sources.list``, for
    pinned versions, unless ``own_sources`` is false: then the machine's sources, e.g. bookworm for
    another architecture)."""
    opts = []
    if arch:
        opts += ["-o", f"APT::Architecture={arch}", "-o", f"APT::Architectures={arch}"]
    if own_sources:
        opts += ["-o", f"Dir::Etc::sourcelist={apt_dir / 'sources.list'}",
                 "-o", f"Dir::Etc::sourceparts={apt_dir / 'sources.list.d'}",
                 "-o", f"Dir::Etc::preferencesparts={apt_dir / 'preferences.d'}",
                 # Our own lists serve pinned versions only (and sources pinned by their .dsc hash),
                 # so a Release file's freshness adds nothing, while mirrors that serve a dated
                 # snapshot of trixie or sid carry Release files past their Valid-Until.
                 "-o", "Acquire::Check-Valid-Until=false"]
    return opts + [
        "-o", f"Dir::State::Lists={apt_dir / 'lists'}",
        "-o", f"Dir::Cache={apt_dir / 'cache'}",
        "-o", "Dir::State::status=/dev/null",
        # Downloads land in a root-owned project directory the _apt user cannot write to.
        "-o", "APT::Sandbox::User=root",
    ]


def prepare(apt_dir: Path, source_lines: Iterable[str] | None = None) -> None:
    """Create ``apt_dir``'s directories and (``source_lines``) its own sources.list."""
    for sub in ("lists/partial", "cache/archives/partial", "sources.list.d", "preferences.d"):
        (apt_dir / sub).mkdir(parents=True, exist_ok=True)
    if source_lines is not None:
        (apt_dir / "sources.list").write_text("".join(f"{line}\n" for line in source_lines))


def source_line(kind: str, suite: str) -> str:
    """A ``deb``/``deb-src`` line for Debian's archive, checked with the archive keyring."""
    return f"{kind} [signed-by={KEYRING}] {ARCHIVE} {suite} main"


def run(argv: list[str], what: str, error: type[Exception], *, markers: tuple[str, ...] = ("E:",),
        **kwargs) -> str:
    """Run ``argv``; on failure raise ``error`` with one line: ``what`` and the tool's last error."""
    try:
        return subprocess.run(argv, check=True, capture_output=True, text=True, **kwargs).stdout
    except FileNotFoundError:
        raise error(f"{argv[0]} is not installed") from None
    except subprocess.CalledProcessError as exc:
        lines = [ln for ln in (exc.stderr or exc.stdout or "").splitlines() if ln.strip()]
        errors = [ln for ln in lines if ln.startswith(markers)]
        raise error(f"{what}: {(errors or lines or [f'exit {exc.returncode}'])[-1]}") from None
