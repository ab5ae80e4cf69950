"""Pinned Debian source packages for the secure-world firmware (TF-A, mbedTLS, OP-TEE, U-Boot).

Each pin names the suite that serves it, the exact version and the SHA-256 of its ``.dsc``; the
``.dsc`` lists the checksums of the tarballs, which ``dpkg-source -x`` checks. The sources are
fetched with ``apt-get source --download-only`` through a private apt configuration under the
cache (its own ``deb-src`` list, lists and state), so the machine's apt sources are never changed.
sid moves on: when the archive stops serving a pinned version, the fetch fails naming it.
"""

from __future__ import annotations

import dataclasses
import fcntl
import hashlib
import shutil
from pathlib import Path

from . import apt, cache

SUITES = ("bookworm", "trixie", "sid")


@dataclasses.dataclass(frozen=True)
class Pin:
    package: str
    version: str
    suite: str
    dsc_sha256: str
    directory: str  # what dpkg-source -x unpacks to

    @property
    def dsc(self) -> str:
        upstream_and_rev = self.version.split(":", 1)[-1]
        return f"{self.package}_{upstream_and_rev}.dsc"


PINS = {
    # TF-A 2.12 with the qemu platform (Debian's binary package has none).
    "arm-trusted-firmware": Pin("arm-trusted-firmware", "2.12.1+dfsg-1", "trixie",
                                "1b10c0f421eb994c23b4f7fafe18f8e6b65eb70fd4195b49e40611beafcedc26",
                                "arm-trusted-firmware-2.12.1+dfsg"),
    # mbedTLS 3.6 for TF-A's trusted board boot (bookworm's 2.28 is refused by TF-A 2.12).
    "mbedtls": Pin("mbedtls", "3.6.6-0.1~deb13u1", "trixie",
                   "eb9ed1adbbddcb0d00276fac6fcee0056c64ce01481c2522a16dca75792eb5eb", "mbedtls-3.6.6"),
    # OP-TEE OS from sid: trixie's 4.5.0 source is no longer served (its .dsc gives 404).
    "optee-os": Pin("optee-os", "4.10.0-2", "sid",
                    "3775e59ac3b9193294533ec2d3511aea02ef0c08a906a96c100adbeeac1f13cc", "optee-os-4.10.0"),
    # U-Boot of the host's release, the same source as Debian's u-boot-qemu binary.
    "u-boot": Pin("u-boot", "2023.01+dfsg-2+deb12u3", "bookworm",
                  "baf9a1492456920ff66b00fdd19ce8c588261bc2698b4875c9f5fdcfb1332aae", "u-boot-2023.01+dfsg"),
}


class SourceError(RuntimeError):
    """A pinned source package could not be fetched, checked or unpacked."""


def _apt_dir() -> Path:
    return cache.cache_dir("debsrc") / "apt"


def _run(argv: list[str], what: str, **kwargs) -> None:
    apt.run(argv, what, SourceError, markers=("E:", "dpkg-source: error"), **kwargs)


def _update(apt_dir: Path) -> None:
    apt.prepare(apt_dir, [apt.source_line("deb-src", suite) for suite in SUITES])
    _run(["apt-get", *apt.options(apt_dir), "-qq", "--error-on=any", "update"],
         "apt-get update of the private deb-src lists")


def _download(pin: Pin, downloads: Path) -> Path:
    dsc = downloads / pin.dsc
    if not dsc.is_file():
        apt_dir = _apt_dir()
        _update(apt_dir)
        tmp = downloads / f".{pin.package}.partial"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        _run(["apt-get", *apt.options(apt_dir), "-qq", "--download-only", "source",
              f"{pin.package}={pin.version}"],
             f"Debian no longer serves {pin.package} {pin.version} ({pin.suite}); update its pin in "
             "scripts/segway_dev/debsrc.py", cwd=tmp)
        for f in tmp.iterdir():
            f.replace(downloads / f.name)
        tmp.rmdir()
    digest = hashlib.sha256(dsc.read_bytes()).hexdigest()
    if digest != pin.dsc_sha256:
        raise SourceError(f"{pin.dsc}: SHA-256 {digest} is not the pinned {pin.dsc_sha256}")
    return dsc


def _pin(name: str) -> Pin:
    try:
        return PINS[name]
    except KeyError:
        raise SourceError(f"no pinned source package {name!r} (known: {', '.join(PINS)})") from None


def _unpack(pin: Pin, dsc: Path, dest: Path) -> Path:
    # The .dsc is checked against its pinned hash (its uploader's OpenPGP signature cannot be: the
    # archive keyring does not hold uploaders' keys); dpkg-source checks each tarball against it.
    _run(["dpkg-source", "-q", "-x", str(dsc), str(dest / pin.directory)],
         f"dpkg-source could not unpack {pin.dsc}")
    return dest / pin.directory


def source_tree(name: str) -> Path:
    """The unpacked, checked source tree of pinned package ``name`` (fetched on first use)."""
    pin = _pin(name)
    root = cache.cache_dir("debsrc")
    downloads = root / "downloads"
    downloads.mkdir(parents=True, exist_ok=True)
    tree = root / "trees" / f"{pin.package}_{pin.version}"
    with open(root / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # parallel test sessions share the cache
        if (tree / ".unpacked").is_file():
            return tree / pin.directory
        dsc = _download(pin, downloads)
        shutil.rmtree(tree, ignore_errors=True)
        tree.mkdir(parents=True)
        _unpack(pin, dsc, tree)
        (tree / ".unpacked").write_text(pin.version + "\n")
        return tree / pin.directory


def unpack_fresh(name: str, dest: Path) -> Path:
    """A new copy of pinned package ``name``'s source under ``dest`` (for a second, independent
    build: the reproducibility check), from the same checked download as ``source_tree``."""
    pin = _pin(name)
    root = cache.cache_dir("debsrc")
    downloads = root / "downloads"
    downloads.mkdir(parents=True, exist_ok=True)
    with open(root / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        dsc = _download(pin, downloads)
    dest.mkdir(parents=True, exist_ok=True)
    return _unpack(pin, dsc, dest)


def pin_identity(name: str) -> str:
    """What identifies the pinned source in a build's cache key."""
    pin = PINS[name]
    return f"{pin.package}={pin.version}:{pin.dsc_sha256}"
