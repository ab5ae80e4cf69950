"""Debian arm64 userspace for the QEMU guest: pinned packages of another suite, with their closure.

The secure-world guest runs bookworm's kernel and busybox but needs newer userspace than bookworm
carries (the OP-TEE 4.x client, xtest and its TAs from trixie). The packages are resolved and
downloaded through a private apt configuration under the cache (its own ``deb`` list for the suite,
lists and state, ``Dir::State::status=/dev/null``, ``APT::Architecture=arm64``), so the machine's
apt sources and dpkg database are never touched; the dependency closure is what ``apt-get
--print-uris install`` computes against that empty status. Each set is extracted with ``dpkg-deb
-x`` into a cached root, keyed by the pinned versions.

Only binaries and the shared libraries they need (``DT_NEEDED``, followed through the closure) go
into an initramfs (:func:`initramfs_files`): overlaying a closure's ``etc/`` and ``bin/`` over the
busybox initramfs replaces busybox's applets and breaks ``/init``.
"""

from __future__ import annotations

import dataclasses
import fcntl
import hashlib
import json
import re
import shutil
import urllib.parse
from pathlib import Path
from typing import Iterable, Mapping

from . import apt, cache

SUITE = "trixie"
LIBDIR = "usr/lib/aarch64-linux-gnu"
LOADER = "ld-linux-aarch64.so.1"  # PT_INTERP is /lib/ld-linux-aarch64.so.1

# OP-TEE's normal-world client (4.5.0: what trixie carries) and xtest with its TAs, which Debian
# signs with upstream's default TA key.
OPTEE_CLIENT = {"tee-supplicant": "4.5.0-1", "libteec2": "4.5.0-1", "optee-test-qemu": "4.5.0-1"}
XTEST_TA_DIR = "usr/lib/optee_armtz"
# OP-TEE's TA dev kit of the same release: its keys/default.pem is the upstream key Debian's TAs are
# signed with (RSA 2048 in 4.5.0; upstream's 4.10 tree ships another, RSA 4096, key under that name).
OPTEE_DEV_KIT = {"optee-os-dev": "4.5.0-2"}
OPTEE_DEV_KIT_DEFAULT_KEY = "usr/lib/optee-os-dev/vexpress-qemu_armv8a/keys/default.pem"


class GuestPackageError(RuntimeError):
    """Guest packages could not be resolved, downloaded or extracted."""


@dataclasses.dataclass(frozen=True)
class GuestRoot:
    root: Path  # every package of the closure, extracted
    packages: dict  # name -> version, the whole closure as downloaded

    def path(self, rel: str) -> Path:
        return self.root / rel


def _run(argv: list[str], what: str, **kwargs) -> str:
    return apt.run(argv, what, GuestPackageError, **kwargs)


def _update(apt_dir: Path, suite: str) -> list[str]:
    apt.prepare(apt_dir, [apt.source_line("deb", suite)])
    opts = apt.options(apt_dir, arch="arm64")
    # --error-on=any: an unreachable archive fails here, not later as "package not found".
    _run(["apt-get", *opts, "-qq", "--error-on=any", "update"], f"apt-get update of the private {suite} lists")
    return opts


def _check_served(opts: list[str], pins: Mapping[str, str], suite: str) -> None:
    for name, version in pins.items():
        out = _run(["apt-cache", *opts, "madison", name], f"apt-cache madison {name}")
        served = [line.split("|")[1].strip() for line in out.splitlines() if line.count("|") >= 2]
        if version not in served:
            raise GuestPackageError(
                f"Debian {suite} no longer serves {name} {version} (it has {', '.join(served) or 'none'}); "
                "update its pin in scripts/segway_dev/guest_packages.py")


def _closure(opts: list[str], pins: Mapping[str, str], recommends: bool = True) -> dict[str, str]:
    """name -> version of every package ``apt-get install`` of the pins needs on an empty system."""
    extra = [] if recommends else ["--no-install-recommends"]
    out = _run(["apt-get", *opts, "-qq", "--print-uris", *extra, "install", *(f"{n}={v}" for n, v in pins.items())],
               "apt-get --print-uris install")
    closure = {}
    for line in out.splitlines():
        match = re.match(r"'[^']+' (\S+?)_(\S+?)_(?:arm64|all)\.deb ", line)
        if match:
            closure[match.group(1)] = urllib.parse.unquote(match.group(2))
    missing = set(pins) - set(closure)
    if missing:
        raise GuestPackageError(f"apt did not resolve {', '.join(sorted(missing))}")
    return closure


def fetch(pins: Mapping[str, str] = OPTEE_CLIENT, *, suite: str = SUITE, dependencies: bool = True,
          recommends: bool = True) -> GuestRoot:
    """The pinned packages and (``dependencies``) their dependency closure, with or without what
    they recommend, extracted (cached by suite, pins and those choices)."""
    base = cache.cache_dir(f"guest-{suite}")
    base.mkdir(parents=True, exist_ok=True)
    key = [suite, sorted(pins.items()), dependencies] + ([] if recommends else ["no-recommends"])
    ident = hashlib.sha256(json.dumps(key).encode()).hexdigest()[:16]
    where = base / "roots" / ident
    stamp = where / "packages.json"
    with open(base / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # parallel test sessions share the cache
        if stamp.is_file():
            return GuestRoot(where / "root", json.loads(stamp.read_text()))
        opts = _update(base / "apt", suite)
        _check_served(opts, pins, suite)
        closure = _closure(opts, pins, recommends) if dependencies else dict(pins)
        shutil.rmtree(where, ignore_errors=True)
        debs = where / "debs"
        debs.mkdir(parents=True)
        _run(["apt-get", *opts, "-qq", "download", *(f"{n}={v}" for n, v in sorted(closure.items()))],
             f"apt-get download from {suite}", cwd=debs)
        root = where / "root"
        root.mkdir()
        for deb in sorted(debs.glob("*.deb")):
            _run(["dpkg-deb", "-x", str(deb), str(root)], f"dpkg-deb -x {deb.name}")
        stamp.write_text(json.dumps(closure, indent=1, sort_keys=True) + "\n")
        return GuestRoot(root, closure)


def _needed(elf: Path) -> list[str]:
    out = _run(["readelf", "-d", str(elf)], f"readelf -d {elf.name}")
    return re.findall(r"\(NEEDED\)\s+Shared library: \[([^\]]+)\]", out)


def initramfs_files(guest: GuestRoot, binaries: Iterable[str]) -> dict[str, Path]:
    """``build_initramfs`` extra files: the binaries (root-relative paths) at their paths, the
    libraries they need (followed recursively) in ``usr/lib/aarch64-linux-gnu`` and the dynamic
    loader at ``lib/`` (its PT_INTERP path)."""
    files: dict[str, Path] = {}
    todo: list[Path] = []
    for rel in binaries:
        src = guest.path(rel)
        if not src.is_file():
            raise GuestPackageError(f"{rel} is in none of {', '.join(sorted(guest.packages))}")
        files[rel] = src
        todo.append(src)
    libdir = guest.path(LIBDIR)
    while todo:
        for lib in _needed(todo.pop()):
            rel = f"{LIBDIR}/{lib}"
            if rel in files:
                continue
            src = libdir / lib
            if lib == LOADER:
                src = guest.path(f"usr/lib/{LOADER}")
                files[f"lib/{LOADER}"] = src.resolve()
                continue
            if not src.exists():
                raise GuestPackageError(f"{lib} (needed by the guest binaries) is in none of the packages")
            files[rel] = src.resolve()  # the file behind the SONAME link, under the SONAME
            todo.append(src.resolve())
    return files
