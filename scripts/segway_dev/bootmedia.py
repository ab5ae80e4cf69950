"""Debian bookworm arm64 boot media: a kernel, its modules and a busybox initramfs.

Two kernel flavours: ``cloud`` (small, for the FIT tests on Debian's U-Boot) and ``generic``
(``linux-image-arm64``: it has ``tee.ko``/``optee.ko``, which the secure-world chain needs).

The packages are fetched once with ``apt-get download`` into the cache (``cache.cache_dir("arm64")``) using private
apt lists and state (``Dir::State::status=/dev/null``), so the host's dpkg configuration is never
touched, and extracted with ``dpkg-deb -x``.
"""

from __future__ import annotations

import dataclasses
import fcntl
import gzip
import json
import lzma
import os
import re
import shutil
import stat
import subprocess
import tempfile
from pathlib import Path
from typing import Iterable, Mapping, Union

from . import apt, cache

KERNEL_META_PACKAGES = {"cloud": "linux-image-cloud-arm64", "generic": "linux-image-arm64"}
BUSYBOX_PACKAGE = "busybox-static"
USERSPACE_MARKER = "SEGWAY-USERSPACE-OK"

_STAMP = "media.json"
_ARM64_IMAGE_MAGIC = b"ARM\x64"  # at offset 0x38 of an arm64 Image (Documentation/arm64/booting.rst)


class BootMediaError(RuntimeError):
    """The boot media could not be fetched, extracted or assembled."""


@dataclasses.dataclass(frozen=True)
class BootMedia:
    kernel_version: str  # e.g. "6.1.0-56-cloud-arm64"
    kernel_image: Path  # raw arm64 Image, ready for a FIT with compression = "none"
    modules_dir: Path  # .../lib/modules/<kernel_version>
    busybox: Path  # statically linked arm64 busybox


# --------------------------------------------------------------------------------------------
# Download and extraction


def _apt_options(apt_dir: Path) -> list[str]:
    return apt.options(apt_dir, arch="arm64", own_sources=False)  # the machine's bookworm sources


def _run(argv: list[str], **kwargs) -> subprocess.CompletedProcess:
    try:
        return subprocess.run(argv, check=True, capture_output=True, text=True, **kwargs)
    except FileNotFoundError as exc:
        raise BootMediaError(f"{argv[0]} is not installed") from exc
    except subprocess.CalledProcessError as exc:
        detail = (exc.stderr or exc.stdout or "").strip().splitlines()
        # Name the program and its subcommand, not the private apt options in between.
        what = " ".join(a for a in argv if not a.startswith("-") and "=" not in a)[:60]
        raise BootMediaError(f"{what} failed: {detail[-1] if detail else exc}") from exc


def _resolve_kernel_package(opts: list[str], flavour: str) -> str:
    meta = KERNEL_META_PACKAGES[flavour]
    out = _run(["apt-cache", *opts, "depends", meta]).stdout
    suffix = "-cloud-arm64" if flavour == "cloud" else "-arm64"
    match = re.search(rf"Depends:\s*<?(linux-image-[0-9][^\s>]*(?<!-cloud){re.escape(suffix)})>?", out)
    if not match:
        raise BootMediaError(f"cannot find the versioned kernel package behind {meta}")
    return match.group(1)


def _download(cache_dir: Path, flavour: str) -> dict:
    apt_dir = cache_dir / "apt"
    apt.prepare(apt_dir)
    opts = _apt_options(apt_dir)
    # --error-on=any: an unreachable source fails here, not later as "no packages found".
    _run(["apt-get", *opts, "-qq", "--error-on=any", "update"])
    kernel_pkg = _resolve_kernel_package(opts, flavour)
    debs = cache_dir / "debs"
    shutil.rmtree(debs, ignore_errors=True)
    debs.mkdir()
    _run(["apt-get", *opts, "-qq", "download", kernel_pkg, BUSYBOX_PACKAGE], cwd=debs)

    root = cache_dir / "root"
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir()
    for deb in sorted(debs.glob("*.deb")):
        _run(["dpkg-deb", "-x", str(deb), str(root)])

    version = kernel_pkg.removeprefix("linux-image-")
    vmlinuz = root / "boot" / f"vmlinuz-{version}"
    if not vmlinuz.is_file():
        raise BootMediaError(f"{kernel_pkg} has no {vmlinuz.name}")
    raw = vmlinuz.read_bytes()
    # Debian bookworm ships arm64 vmlinuz as a plain Image; older or other builds gzip it.
    if raw[:2] == b"\x1f\x8b":
        raw = gzip.decompress(raw)
    if raw[0x38:0x3C] != _ARM64_IMAGE_MAGIC:
        raise BootMediaError(f"{vmlinuz.name} is not an arm64 Image")
    image = cache_dir / "Image"
    _write_atomic(image, raw)

    busybox = root / "bin" / "busybox"
    if not busybox.is_file():
        raise BootMediaError(f"{BUSYBOX_PACKAGE} has no bin/busybox")
    modules_dir = root / "lib" / "modules" / version
    if not modules_dir.is_dir():
        raise BootMediaError(f"{kernel_pkg} has no lib/modules/{version}")
    return {
        "kernel_version": version,
        "kernel_image": str(image.relative_to(cache_dir)),
        "modules_dir": str(modules_dir.relative_to(cache_dir)),
        "busybox": str(busybox.relative_to(cache_dir)),
    }


def fetch_boot_media(cache_dir: Path | None = None, flavour: str = "cloud") -> BootMedia:
    """Return the cached arm64 boot media, downloading and extracting it on first use."""
    if flavour not in KERNEL_META_PACKAGES:
        raise BootMediaError(f"unknown kernel flavour {flavour!r} (expected one of {', '.join(KERNEL_META_PACKAGES)})")
    cache_dir = Path(cache_dir or cache.cache_dir("arm64" if flavour == "cloud" else f"arm64-{flavour}"))
    cache_dir.mkdir(parents=True, exist_ok=True)
    with open(cache_dir / ".lock", "w") as lock:
        # Parallel test sessions share the cache; only one of them downloads.
        fcntl.flock(lock, fcntl.LOCK_EX)
        stamp = cache_dir / _STAMP
        info = None
        if stamp.is_file():
            info = json.loads(stamp.read_text())
            if not all((cache_dir / info[k]).exists() for k in ("kernel_image", "modules_dir", "busybox")):
                info = None
        if info is None:
            info = _download(cache_dir, flavour)
            _write_atomic(stamp, json.dumps(info, indent=1).encode())
    return BootMedia(
        kernel_version=info["kernel_version"],
        kernel_image=cache_dir / info["kernel_image"],
        modules_dir=cache_dir / info["modules_dir"],
        busybox=cache_dir / info["busybox"],
    )


# --------------------------------------------------------------------------------------------
# Kernel modules


def _module_key(name: str) -> str:
    # The kernel treats '-' and '_' in module names as the same character.
    return name.replace("-", "_")


def _strip_module_suffix(filename: str) -> str:
    for suffix in (".ko.xz", ".ko.gz", ".ko.zst", ".ko"):
        if filename.endswith(suffix):
            return filename[: -len(suffix)]
    return filename


def _read_module(path: Path) -> bytes:
    data = path.read_bytes()
    if path.name.endswith(".xz"):
        return lzma.decompress(data)
    if path.name.endswith(".gz"):
        return gzip.decompress(data)
    if path.name.endswith(".zst"):
        return _run_bytes(["zstd", "-dc", str(path)])
    return data


def _run_bytes(argv: list[str]) -> bytes:
    try:
        return subprocess.run(argv, check=True, capture_output=True).stdout
    except (FileNotFoundError, subprocess.CalledProcessError) as exc:
        raise BootMediaError(f"{argv[0]} failed on {argv[-1]}") from exc


def _module_depends(ko: bytes) -> list[str]:
    # modinfo strings live NUL-separated in the module's .modinfo section.
    match = re.search(rb"(?:^|\x00)depends=([^\x00]*)\x00", ko)
    if not match or not match.group(1):
        return []
    return [d for d in match.group(1).decode().split(",") if d]


def _module_index(modules_dir: Path) -> dict[str, Path]:
    index = {}
    for path in sorted((modules_dir / "kernel").rglob("*.ko*")):
        index[_module_key(_strip_module_suffix(path.name))] = path
    return index


def _builtin_modules(modules_dir: Path) -> set[str]:
    builtin = modules_dir / "modules.builtin"
    if not builtin.is_file():
        return set()
    return {_module_key(_strip_module_suffix(Path(line).name)) for line in builtin.read_text().split()}


def add_modules(initramfs_dir: Path, names: Iterable[str], media: BootMedia | None = None) -> list[str]:
    """Copy the named kernel modules and their dependencies into an initramfs tree.

    Modules land uncompressed under ``lib/modules/<version>/`` with a ``modules.dep`` so busybox
    ``modprobe`` finds them. Returns the module names in load order (dependencies first); modules
    built into the kernel are skipped.
    """
    media = media or fetch_boot_media()
    index = _module_index(media.modules_dir)
    builtin = _builtin_modules(media.modules_dir)
    contents: dict[str, bytes] = {}
    depends: dict[str, list[str]] = {}
    order: list[str] = []

    def visit(name: str, chain: tuple[str, ...]) -> None:
        key = _module_key(name)
        if key in depends or key in builtin:
            return
        if key in chain:
            raise BootMediaError(f"module dependency loop: {' -> '.join(chain + (key,))}")
        if key not in index:
            raise BootMediaError(f"kernel {media.kernel_version} has no module {name!r}")
        contents[key] = _read_module(index[key])
        deps = [_module_key(d) for d in _module_depends(contents[key])]
        for dep in deps:
            visit(dep, chain + (key,))
        depends[key] = [d for d in deps if d not in builtin]
        order.append(key)

    for name in names:
        visit(name, ())

    dest_root = Path(initramfs_dir) / "lib" / "modules" / media.kernel_version
    relpath = {}
    for key in order:
        src = index[key]
        rel = src.relative_to(media.modules_dir).parent / (_strip_module_suffix(src.name) + ".ko")
        relpath[key] = rel.as_posix()
        dest = dest_root / rel
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.write_bytes(contents[key])

    def load_order_of_deps(key: str) -> list[str]:
        seen: list[str] = []

        def walk(k: str) -> None:
            for d in depends[k]:
                if d not in seen:
                    walk(d)
                    seen.append(d)

        walk(key)
        return seen

    dep_file = dest_root / "modules.dep"
    lines = dep_file.read_text().splitlines() if dep_file.is_file() else []
    known = {line.split(":", 1)[0] for line in lines}
    for key in order:
        if relpath[key] not in known:
            # depmod convention: modprobe loads the listed dependencies from the last to the first.
            deps = reversed(load_order_of_deps(key))
            lines.append(f"{relpath[key]}: " + " ".join(relpath[d] for d in deps))
    dest_root.mkdir(parents=True, exist_ok=True)
    dep_file.write_text("\n".join(line.rstrip() for line in lines) + "\n")
    for extra in ("modules.builtin", "modules.order"):
        if (media.modules_dir / extra).is_file() and not (dest_root / extra).exists():
            shutil.copyfile(media.modules_dir / extra, dest_root / extra)
    return order


# --------------------------------------------------------------------------------------------
# Initramfs

_PREAMBLE = """#!/bin/sh
/bin/busybox --install -s
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
"""


def init_script(body: str, *, power_off: bool = True) -> str:
    """Wrap shell commands into an /init: install busybox applets, mount proc/sys/dev, run, power off."""
    text = _PREAMBLE + body.rstrip("\n") + "\n"
    if power_off:
        # -f: no init system to ask; on virt this is a PSCI SYSTEM_OFF and QEMU exits.
        text += "poweroff -f\n"
    return text


DEFAULT_INIT = init_script(f"echo {USERSPACE_MARKER}")

FileContent = Union[bytes, str, os.PathLike]

_DIRS = ("bin", "sbin", "usr/bin", "usr/sbin", "dev", "proc", "sys", "tmp", "run", "mnt", "etc", "root")
# Character devices the kernel needs before /init mounts devtmpfs (stdio of init is /dev/console).
_DEVICES = {"dev/console": (0o600, 5, 1), "dev/null": (0o666, 1, 3)}


def build_initramfs(
    out_path: Path,
    init_script: str = DEFAULT_INIT,
    extra_files: Mapping[str, FileContent] | None = None,
    *,
    modules: Iterable[str] = (),
    media: BootMedia | None = None,
) -> Path:
    """Write a gzip-compressed newc cpio initramfs with static busybox, ``/init`` and extra files.

    ``extra_files`` maps archive paths to bytes/str content (mode 0644) or to a host file (its mode
    is kept). ``modules`` are added with :func:`add_modules`. Output is written atomically and is
    reproducible (mtimes = ``SOURCE_DATE_EPOCH`` or 0, owner root).
    """
    media = media or fetch_boot_media()
    out_path = Path(out_path)
    with tempfile.TemporaryDirectory(prefix="initramfs-") as tmp:
        stage = Path(tmp)
        for d in _DIRS:
            (stage / d).mkdir(parents=True, exist_ok=True)
        shutil.copyfile(media.busybox, stage / "bin" / "busybox")
        os.chmod(stage / "bin" / "busybox", 0o755)
        os.symlink("busybox", stage / "bin" / "sh")
        (stage / "init").write_text(init_script)
        os.chmod(stage / "init", 0o755)
        for name, content in (extra_files or {}).items():
            rel = Path(name.lstrip("/"))
            if ".." in rel.parts or not rel.parts:
                raise BootMediaError(f"bad initramfs path {name!r}")
            dest = stage / rel
            dest.parent.mkdir(parents=True, exist_ok=True)
            if isinstance(content, (bytes, bytearray)):
                dest.write_bytes(content)
                os.chmod(dest, 0o644)
            elif isinstance(content, str):
                dest.write_text(content)
                os.chmod(dest, 0o644)
            else:
                shutil.copy(content, dest)
        modules = list(modules)
        if modules:
            add_modules(stage, modules, media)
        archive = _newc_archive(stage, _source_date_epoch())
    _write_atomic(out_path, gzip.compress(archive, compresslevel=6, mtime=0))
    return out_path


def _source_date_epoch() -> int:
    try:
        return int(os.environ.get("SOURCE_DATE_EPOCH", "0"))
    except ValueError:
        return 0


def _newc_entry(ino: int, name: str, mode: int, data: bytes, mtime: int, nlink: int = 1,
                rdev: tuple[int, int] = (0, 0)) -> bytes:
    encoded = name.encode() + b"\0"
    fields = (ino, mode, 0, 0, nlink, mtime, len(data), 0, 0, rdev[0], rdev[1], len(encoded), 0)
    header = b"070701" + b"".join(b"%08X" % f for f in fields)
    out = header + encoded
    out += b"\0" * (-len(out) % 4)
    out += data + b"\0" * (-len(data) % 4)
    return out


def _newc_archive(stage: Path, mtime: int) -> bytes:
    """Serialise a directory tree as a newc ("070701") cpio archive, all entries owned by root."""
    entries: list[bytes] = []
    ino = 1
    paths = sorted(p for p in stage.rglob("*"))
    names = {p.relative_to(stage).as_posix(): p for p in paths}
    for dev in _DEVICES:
        names.setdefault(dev, None)
    for name in sorted(names):
        path = names[name]
        ino += 1
        if path is None:
            perm, major, minor = _DEVICES[name]
            entries.append(_newc_entry(ino, name, stat.S_IFCHR | perm, b"", mtime, rdev=(major, minor)))
            continue
        st = path.lstat()
        if stat.S_ISLNK(st.st_mode):
            entries.append(_newc_entry(ino, name, stat.S_IFLNK | 0o777, os.readlink(path).encode(), mtime))
        elif stat.S_ISDIR(st.st_mode):
            entries.append(_newc_entry(ino, name, stat.S_IFDIR | 0o755, b"", mtime, nlink=2))
        else:
            perm = 0o755 if st.st_mode & 0o111 else 0o644
            entries.append(_newc_entry(ino, name, stat.S_IFREG | perm, path.read_bytes(), mtime))
    entries.append(_newc_entry(0, "TRAILER!!!", 0, b"", 0))
    return b"".join(entries)


def _write_atomic(path: Path, data: bytes) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise
