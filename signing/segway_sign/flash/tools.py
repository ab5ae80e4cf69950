"""The external programs flashing runs, one small wrapper each.

Each wrapper knows its program's name, the Debian package that installs it, and how to call it for
what flashing needs. A program that is missing, or that fails, is a one-line :class:`SegwayError`
naming the program (and the package to install), never a traceback.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

from ..errors import InputError, SegwayError, UsageError


class Tool:
    """An external program: ``name`` on the PATH, installed by the Debian ``package`` (or as ``install``
    says, for a program Debian does not ship)."""

    name: str = ""
    package: str | None = None
    install: str | None = None

    def present(self) -> bool:
        return shutil.which(self.name) is not None

    def missing(self) -> str:
        how = f"apt-get install {self.package}" if self.package else self.install
        return f"{self.name} is not installed ({how})" if how else f"{self.name} is not installed"

    def require(self) -> None:
        if not self.present():
            raise UsageError(self.missing())

    def command(self, *args: str | Path) -> list[str]:
        return [self.name, *map(str, args)]

    def run(self, *args: str | Path, check: bool = True, text: bool = True, cwd: Path | None = None,
            **kwargs) -> subprocess.CompletedProcess:
        """Run with output captured; with ``check`` a non-zero exit is ``<name> failed: <last line>``."""
        try:
            r = subprocess.run(self.command(*args), capture_output=True, text=text, cwd=cwd, **kwargs)
        except FileNotFoundError:
            raise UsageError(self.missing()) from None
        if check and r.returncode:
            raise SegwayError(f"{self.name} failed: {_last_line(r.stderr) or r.returncode}")
        return r

    def run_attached(self, args: list[str], cwd: Path) -> None:
        """Run with the terminal attached (a long write the user watches)."""
        try:
            code = subprocess.run(args, cwd=cwd).returncode
        except FileNotFoundError:
            raise UsageError(self.missing()) from None
        if code:
            raise SegwayError(f"{self.name} failed")


def _last_line(out: str | bytes | None) -> str:
    if isinstance(out, bytes):
        out = out.decode(errors="replace")
    lines = (out or "").strip().splitlines()
    return lines[-1] if lines else ""


class Cp(Tool):
    """GNU cp: copies a disk image keeping its holes (the block map lists only the data)."""

    name, package = "cp", "coreutils"

    def sparse_copy(self, src: Path, dst: Path) -> None:
        self.run("--sparse=always", src, dst)


class Sgdisk(Tool):
    """sgdisk (GPT fdisk): lays out a GPT disk image."""

    name, package = "sgdisk", "gdisk"

    def layout(self, disk: Path, partitions, sector: int) -> None:
        """One GPT entry per partition (``name``, ``offset``, ``size``, optional ``type`` code or GUID,
        optional unique ``guid``), numbered from 1, no alignment."""
        args = ["-a", "1"]
        for i, part in enumerate(partitions, 1):
            args += [f"-n{i}:{part.offset // sector}:{(part.offset + part.size) // sector - 1}", f"-c{i}:{part.name}"]
            args += [f"-t{i}:{part.type}"] if part.type else []
            args += [f"-u{i}:{part.guid}"] if part.guid else []
        r = self.run(*args, disk, check=False)
        if r.returncode:
            raise InputError(f"sgdisk could not lay out the disk: {r.stderr.strip() or r.stdout.strip()}")


class Bmaptool(Tool):
    """bmaptool: makes an image's block map, and writes the image through it to a device."""

    name, package = "bmaptool", "bmap-tools"

    def create(self, image: Path) -> Path:
        bmap = Path(str(image) + ".bmap")
        r = self.run("create", "-o", bmap, image, check=False)
        if r.returncode:
            raise InputError(f"bmaptool create failed: {_last_line(r.stderr) if r.stderr else r.returncode}")
        return bmap

    def copy_command(self, bmap: str, image: str, device: str) -> list[str]:
        return self.command("copy", "--bmap", bmap, image, device)


class MkfsVfat(Tool):
    """mkfs.vfat: an empty FAT file system image."""

    name, package = "mkfs.vfat", "dosfstools"

    def make(self, image: Path, label: str, kib: int) -> None:
        self.run("-n", label, "-C", image, str(kib))


class MkfsExt4(Tool):
    """mkfs.ext4: an empty ext4 file system image."""

    name, package = "mkfs.ext4", "e2fsprogs"

    def make(self, image: Path, label: str, size: str) -> None:
        self.run("-q", "-F", "-L", label, image, size)


class Debugfs(Tool):
    """debugfs: replaces and reads a file in an ext4 image without mounting it."""

    name, package = "debugfs", "e2fsprogs"

    def replace(self, image: Path, name: str, payload: Path, script: Path) -> None:
        """``/name`` becomes ``payload``; debugfs reports problems on stderr only, so callers read back."""
        script.write_text(f"rm /{name}\nwrite {payload} /{name}\n")
        self.run("-w", "-f", script, image, check=False)

    def cat(self, image: Path, name: str) -> bytes:
        return self.run("-R", f"cat /{name}", image, check=False, text=False).stdout


class Mcopy(Tool):
    """mcopy (mtools): copies a file into a FAT image without mounting it."""

    name, package = "mcopy", "mtools"

    def put(self, image: Path, payload: Path, name: str, overwrite: bool = False, check: bool = True) -> None:
        self.run(*(["-o"] if overwrite else []), "-i", image, payload, f"::{name}", check=check)


class Mtype(Tool):
    """mtype (mtools): reads a file out of a FAT image."""

    name, package = "mtype", "mtools"

    def cat(self, image: Path, name: str) -> bytes:
        return self.run("-i", image, f"::{name}", check=False, text=False).stdout


class Uuu(Tool):
    """NXP's uuu (mfgtools): runs a uuu script over USB; ``-dry`` parses it and opens every file it
    names without a board attached."""

    name, package = "uuu", "uuu"

    def program(self, script: str) -> list[str]:
        return self.command(script)

    def check(self, script: str, cwd: Path) -> str | None:
        """``uuu -dry`` on the script when uuu is installed: the line to show, or None (not installed)."""
        if not self.present():
            return None
        r = self.run("-dry", script, cwd=cwd, check=False, timeout=60, stdin=subprocess.DEVNULL)
        if r.returncode:
            raise SegwayError(f"uuu -dry rejects {script}")
        return f"uuu -dry: {script} OK"


class Stm32Programmer(Tool):
    """ST's STM32_Programmer_CLI (STM32CubeProgrammer): writes an STM32CubeProgrammer flash layout over
    USB (DFU). It has no dry mode."""

    name = "STM32_Programmer_CLI"
    install = "STM32CubeProgrammer from st.com"

    def program(self, layout: str) -> list[str]:
        return self.command("-c", "port=usb1", "-w", layout)

    def check(self, layout: str, cwd: Path) -> str | None:
        return None


cp = Cp()
sgdisk = Sgdisk()
bmaptool = Bmaptool()
mkfs_vfat = MkfsVfat()
mkfs_ext4 = MkfsExt4()
debugfs = Debugfs()
mcopy = Mcopy()
mtype = Mtype()
uuu = Uuu()
stm32_programmer = Stm32Programmer()
