"""Add files to an initramfs by appending an uncompressed newc cpio archive.

The kernel unpacks concatenated archives in order, compressed or not, skipping NUL padding between
them (``init/initramfs.c``), so the original (often compressed) initramfs stays byte-for-byte intact.
"""

from __future__ import annotations

from ..reproducible import source_date_epoch


def _entry(name: str, mode: int, data: bytes, ino: int, mtime: int) -> bytes:
    fields = [ino, mode, 0, 0, 2 if mode & 0o040000 else 1, mtime, len(data), 0, 0, 0, 0, len(name) + 1, 0]
    header = b"070701" + b"".join(f"{v:08x}".encode() for v in fields)
    out = header + name.encode() + b"\0"
    out += b"\0" * (-len(out) % 4)
    out += data + b"\0" * (-len(data) % 4)
    return out


def newc_archive(files: dict[str, bytes], mtime: int | None = None) -> bytes:
    """A newc archive with ``files`` (path → content, mode 0644) and the directories above them."""
    if mtime is None:
        mtime = source_date_epoch(default=0)
    dirs: list[str] = []
    for path in files:
        parts = path.strip("/").split("/")[:-1]
        for i in range(1, len(parts) + 1):
            d = "/".join(parts[:i])
            if d not in dirs:
                dirs.append(d)
    out = b""
    ino = 1
    for d in dirs:
        out += _entry(d, 0o040755, b"", ino, mtime)
        ino += 1
    for path, data in files.items():
        out += _entry(path.strip("/"), 0o100644, data, ino, mtime)
        ino += 1
    out += _entry("TRAILER!!!", 0, b"", 0, 0)
    return out + b"\0" * (-len(out) % 512)


def append_files(initramfs: bytes, files: dict[str, bytes]) -> bytes:
    """``initramfs`` followed (at a 4-byte boundary) by an archive holding ``files``."""
    return initramfs + b"\0" * (-len(initramfs) % 4) + newc_archive(files)


def ends_with_archive(initramfs: bytes, files: dict[str, bytes]) -> bool:
    """Whether ``initramfs`` ends with exactly the archive :func:`append_files` appends for ``files``.

    Only the archive's modification time may be any value. The kernel unpacks the archives in
    order and an entry replaces what an earlier one put at its name; this last archive lists every
    directory above the files too, so whatever the archives before it hold, these bytes are what
    the initramfs reads at those paths.
    """
    probe = newc_archive(files, mtime=0)  # fixed-width fields: the length does not depend on mtime
    start = len(initramfs) - len(probe)
    if start < 0 or start % 4:
        return False
    tail = bytes(initramfs[start:])
    mtime_field = tail[6 + 5 * 8: 6 + 6 * 8]  # c_mtime of the first entry
    if not all(c in b"0123456789abcdef" for c in mtime_field):
        return False
    return tail == newc_archive(files, mtime=int(mtime_field, 16))
