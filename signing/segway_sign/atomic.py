"""Atomic, durable outputs: a failure or a kill never leaves a partial output behind.

Files are written into an unnamed file in the output's directory (``O_TMPFILE``), flushed to disk
(``fsync``) and only then given their name (``linkat`` through ``/proc/self/fd``): a writer killed at
any moment leaves nothing behind, not even a hidden file. ``linkat`` cannot replace a name, so an
existing output replaced with ``--force`` gets the finished file under a temporary name first and
then a rename; so does every output on a filesystem without ``O_TMPFILE``. Directories are built
under a temporary name and renamed (swapped with ``renameat2(RENAME_EXCHANGE)`` when replaced).

Temporary names are ``.<output>.segway-<machine>-<boot>-<pid>-<start>-<random>.tmp`` (``.old``
for a replaced directory on its way out). ``<pid>`` and ``<start>`` (the process start time from
``/proc/<pid>/stat``) name the writer, so a reused PID is not mistaken for it. Before writing, every
run removes the temporaries next to its output whose writer is dead: same machine and PID
namespace (``<machine>``), and an earlier boot (``<boot>``) or no live process with that PID and
start time. Names of any other form are never touched.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import functools
import hashlib
import os
import re
import secrets
import shutil
import socket
from pathlib import Path
from typing import Iterator, NamedTuple

from .errors import OutputExistsError, SegwayError

_TEMP_NAME = re.compile(
    r"^\..*\.segway-(?P<machine>[0-9a-f]{8})-(?P<boot>[0-9a-f]{8})-(?P<pid>[0-9]+)-(?P<start>[0-9]+)"
    r"-[0-9a-f]{6}\.(?:tmp|old)$", re.DOTALL)
# Room for the writer's marks in a file name of at most 255 bytes.
_MAX_OUTPUT_NAME = 150


# ---------------------------------------------------------------------------------------------
# Who wrote a temporary, and is it still running?

def _read(path: str) -> bytes | None:
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError:
        return None


def _short_hash(text: bytes) -> str:
    return hashlib.sha256(text).hexdigest()[:8]


@functools.lru_cache(maxsize=None)
def _machine_tag() -> str:
    """Host name and PID namespace: PIDs are only comparable within both."""
    try:
        pid_ns = os.readlink("/proc/self/ns/pid")
    except OSError:
        pid_ns = "?"
    return _short_hash(f"{socket.gethostname()}\0{pid_ns}".encode())


@functools.lru_cache(maxsize=None)
def _boot_tag() -> str:
    return _short_hash(_read("/proc/sys/kernel/random/boot_id") or b"?")


def _process_state(pid: int) -> tuple[str, str] | None:
    """(state letter, start time in clock ticks since boot) of a process, or None if there is none."""
    stat = _read(f"/proc/{pid}/stat")
    if not stat:
        return None
    # The command name (field 2) may hold spaces and parentheses: fields 3.. follow the last ')'.
    fields = stat[stat.rfind(b")") + 2:].split()
    if len(fields) < 20:
        return None
    return fields[0].decode("ascii", "replace"), fields[19].decode("ascii", "replace")


def _writer_marks() -> str:
    pid = os.getpid()
    state = _process_state(pid)
    return f"{_machine_tag()}-{_boot_tag()}-{pid}-{state[1] if state else 0}"


def temp_name(output_name: str, suffix: str = ".tmp") -> str:
    """A fresh temporary name for ``output_name`` in this process (see the module docstring)."""
    return f".{output_name[:_MAX_OUTPUT_NAME]}.segway-{_writer_marks()}-{secrets.token_hex(3)}{suffix}"


def _writer_is_dead(name: str) -> bool:
    m = _TEMP_NAME.match(name)
    if m is None or m["machine"] != _machine_tag():
        return False  # not ours, or written on another machine or in another PID namespace
    if m["boot"] != _boot_tag():
        return True  # written before the last boot
    state = _process_state(int(m["pid"]))
    return state is None or state[1] != m["start"] or state[0] in ("Z", "X")


def remove_stale_temporaries(directory: str | os.PathLike) -> list[str]:
    """Remove the temporaries (files and directories) in ``directory`` whose writer is dead.

    Returns the names removed. Errors are ignored: a temporary that cannot be removed now is
    retried by the next run."""
    removed = []
    try:
        entries = list(os.scandir(directory))
    except OSError:
        return removed
    for entry in entries:
        if not entry.name.startswith(".") or ".segway-" not in entry.name or not _writer_is_dead(entry.name):
            continue
        try:
            if entry.is_dir(follow_symlinks=False):
                shutil.rmtree(entry.path)
            else:
                os.unlink(entry.path)
        except OSError:
            continue
        removed.append(entry.name)
    return removed


# ---------------------------------------------------------------------------------------------
# Durability helpers

def _fsync_path(path: str | os.PathLike, directory: bool = False) -> None:
    flags = os.O_RDONLY | os.O_CLOEXEC | (os.O_DIRECTORY if directory else 0)
    fd = os.open(path, flags)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_tree(root: Path) -> None:
    """fsync every file and directory below ``root`` (deepest first), then ``root`` itself."""
    for dirpath, dirnames, filenames in os.walk(root, topdown=False):
        for name in filenames:
            p = os.path.join(dirpath, name)
            if not os.path.islink(p):
                _fsync_path(p)
        for name in dirnames:
            p = os.path.join(dirpath, name)
            if not os.path.islink(p):
                _fsync_path(p, directory=True)
    _fsync_path(root, directory=True)


_SYNC_FILE_RANGE_WRITE = 2


def start_writeback(fd: int, offset: int = 0, length: int = 0) -> None:
    """Ask the kernel to start writing the dirty pages of ``length`` bytes at ``offset`` of ``fd``
    (0: to the end) to disk, without waiting for the disk (sync_file_range SYNC_FILE_RANGE_WRITE;
    it may block while the requests are queued): a later fsync then waits only for what is left.
    A hint: where the call is missing or refused, nothing happens; durability is the fsync's."""
    try:
        call = ctypes.CDLL(None, use_errno=True).sync_file_range
    except (OSError, AttributeError):
        return
    call.argtypes = [ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint]
    call(fd, offset, length, _SYNC_FILE_RANGE_WRITE)


class FileRange(NamedTuple):
    """``length`` bytes at ``offset`` of the open file ``fd``: a piece of an output that
    write_file copies inside the kernel (copy_file_range), without reading it into memory."""
    fd: int
    offset: int
    length: int


def _copy_range(fd: int, piece: FileRange, at: int | None = None) -> None:
    """Copy ``piece`` to ``fd``: at its file position, or at offset ``at`` (the position unmoved)."""
    offset, end = piece.offset, piece.offset + piece.length
    use_cfr = hasattr(os, "copy_file_range")
    while offset < end:
        if use_cfr:
            try:
                n = os.copy_file_range(piece.fd, fd, min(end - offset, 1 << 30), offset,
                                       None if at is None else at + offset - piece.offset)
            except OSError as err:
                if err.errno not in (errno.EXDEV, errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP, errno.EPERM):
                    raise
                use_cfr = False
                continue
        else:
            data = os.pread(piece.fd, min(end - offset, 8 << 20), offset)
            if at is None:
                _write_all(fd, data)
            else:
                _pwrite_all(fd, data, at + offset - piece.offset)
            n = len(data)
        if not n:
            raise SegwayError("an input shrank while it was being copied to the output")
        offset += n


def _pwrite_all(fd: int, data, at: int) -> None:
    view = memoryview(data).cast("B")
    while view:
        written = os.pwrite(fd, view[:1 << 30], at)
        view, at = view[written:], at + written


def _write_all(fd: int, data) -> None:
    """Write a bytes-like object, or each of an iterable of them (or of FileRanges) in turn."""
    try:
        pieces = [memoryview(data)]
    except TypeError:
        pieces = data
    for piece in pieces:
        if isinstance(piece, FileRange):
            _copy_range(fd, piece)
            continue
        view = memoryview(piece).cast("B")
        while view:
            written = os.write(fd, view[:1 << 30])
            view = view[written:]


def write_at(fd: int, piece, at: int) -> int:
    """Write one piece (bytes-like or FileRange) at offset ``at`` of ``fd``; returns its end."""
    if isinstance(piece, FileRange):
        _copy_range(fd, piece, at)
        return at + piece.length
    _pwrite_all(fd, piece, at)
    return at + memoryview(piece).nbytes


# ---------------------------------------------------------------------------------------------
# Files

def _check_parent(parent: Path) -> None:
    """Refuse at once an output directory that could not be created: its nearest existing
    ancestor is not a directory. A missing directory is created when the output is written."""
    ancestor = parent
    while not os.path.lexists(ancestor) and ancestor != ancestor.parent:
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        what = "is" if ancestor == parent else f"cannot be created: {ancestor} is"
        raise SegwayError(f"output directory {parent} {what} not a directory")


def make_parent(parent: Path) -> None:
    """Create a missing output directory (and its parents), durably."""
    if parent.is_dir():
        return
    _check_parent(parent)
    missing = []
    ancestor = parent
    while not os.path.lexists(ancestor):
        missing.append(ancestor)
        ancestor = ancestor.parent
    try:
        os.makedirs(parent, exist_ok=True)
    except OSError as err:
        raise SegwayError(f"cannot create output directory {parent}: {err.strerror or err}") from None
    for directory in reversed(missing):
        _fsync_path(directory.parent, directory=True)


def check_writable(path: str | os.PathLike, force: bool = False) -> Path:
    """Refuse an existing output unless ``force``; return it as a Path.

    A missing output directory is fine (it is created when the output is written). Also removes
    stale temporaries of dead writers next to the output."""
    path = Path(path)
    if path.exists() and not force:
        raise OutputExistsError(f"output {path} exists (use --force to replace it)")
    parent = path.parent if str(path.parent) else Path(".")
    _check_parent(parent)
    if parent.is_dir():
        remove_stale_temporaries(parent)
    return path


def _open_unnamed(directory: Path) -> int | None:
    """An O_TMPFILE descriptor in ``directory``, or None where the system cannot give (or name) one."""
    flag = getattr(os, "O_TMPFILE", None)
    if flag is None or not os.path.isdir("/proc/self/fd"):
        return None
    try:
        return os.open(directory, flag | os.O_WRONLY | os.O_CLOEXEC, 0o600)
    except OSError as err:
        if err.errno in (errno.EOPNOTSUPP, errno.EISDIR, errno.EINVAL, errno.ENOENT):
            return None
        raise


def _linkat(fd: int, path: Path) -> None:
    """linkat(2) with AT_SYMLINK_FOLLOW through /proc/self/fd (no privilege needed, unlike
    AT_EMPTY_PATH). A directory descriptor makes os.link call linkat, not link."""
    fds = os.open("/proc/self/fd", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.link(str(fd), path, src_dir_fd=fds, follow_symlinks=True)
    finally:
        os.close(fds)


def _link_unnamed(fd: int, path: Path) -> bool:
    """Give the unnamed file ``fd`` the name ``path``; False if the name exists."""
    try:
        _linkat(fd, path)
    except FileExistsError:
        return False
    return True


def write_file(path: str | os.PathLike, data, force: bool = False, mode: int = 0o644) -> Path:
    """Write ``data`` to ``path`` atomically and durably (see the module docstring).

    ``data`` is a bytes-like object or an iterable of them and of FileRanges (written in turn, so a
    large output need not be in memory at once); an exception from the iterable leaves nothing
    behind."""
    with output_file(path, force, mode) as fd:
        _write_all(fd, data)
    return Path(path)


@contextlib.contextmanager
def output_file(path: str | os.PathLike, force: bool = False, mode: int = 0o644) -> Iterator[int]:
    """A descriptor of a new, unnamed file that becomes ``path`` (atomically and durably, as
    write_file) only when the block succeeds; an exception leaves nothing behind. The block writes
    it as it likes (write, pwrite, write_at), in any order."""
    path = check_writable(path, force)
    parent = path.parent
    make_parent(parent)
    fd = _open_unnamed(parent)
    tmp: Path | None = None
    try:
        if fd is None:
            tmp = parent / temp_name(path.name)
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        yield fd
        os.fchmod(fd, mode)
        os.fsync(fd)
        if tmp is None:
            if not (force and os.path.lexists(path)) and _link_unnamed(fd, path):
                _fsync_path(parent, directory=True)
                return
            if not force:
                raise OutputExistsError(f"output {path} exists (use --force to replace it)")
            # Replacing: the finished file gets a temporary name, then takes the output's.
            tmp = parent / temp_name(path.name)
            _linkat(fd, tmp)
        os.replace(tmp, path)
        tmp = None
        _fsync_path(parent, directory=True)
    finally:
        if fd is not None:
            os.close(fd)
        if tmp is not None:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)


# ---------------------------------------------------------------------------------------------
# Directories

_RENAME_EXCHANGE = 2


def _exchange(a: Path, b: Path) -> bool:
    """Swap two names atomically (renameat2 RENAME_EXCHANGE); False where the system cannot."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):
        return False
    at_fdcwd = -100
    renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    if renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP):
        return False
    raise OSError(err, os.strerror(err), str(b))


@contextlib.contextmanager
def output_dir(path: str | os.PathLike, force: bool = False, durable: bool = True) -> Iterator[Path]:
    """Yield a temporary sibling directory that becomes ``path`` only if the block succeeds.

    With ``force`` an existing ``path`` is replaced (after the new content is complete and on disk).
    ``durable=False`` leaves out the fsyncs, for a directory inside another output_dir's temporary
    directory: that one flushes the whole tree before it gets its name, so the inner flushes would
    only wait for the disk twice.
    """
    path = Path(path)
    if path.exists() and not force:
        raise OutputExistsError(f"output {path} exists (use --force to replace it)")
    parent = path.parent if str(path.parent) else Path(".")
    make_parent(parent)
    remove_stale_temporaries(parent)
    tmp = parent / temp_name(path.name)
    os.mkdir(tmp, 0o700)
    try:
        yield tmp
        if durable:
            _fsync_tree(tmp)
        if os.path.lexists(path):
            if _exchange(tmp, path):
                _fsync_path(parent, directory=True)
                # ``tmp`` now holds the old content: a kill from here on leaves it to the next run.
                if tmp.is_dir() and not tmp.is_symlink():
                    shutil.rmtree(tmp, ignore_errors=True)
                else:
                    tmp.unlink()
                return
            old = parent / temp_name(path.name, ".old")
            os.rename(path, old)
            os.rename(tmp, path)
            _fsync_path(parent, directory=True)
            if old.is_dir() and not old.is_symlink():
                shutil.rmtree(old, ignore_errors=True)
            else:
                old.unlink()
        else:
            os.rename(tmp, path)
            if durable:
                _fsync_path(parent, directory=True)
    except BaseException:
        if tmp.is_dir() and not tmp.is_symlink():
            shutil.rmtree(tmp, ignore_errors=True)
        raise
