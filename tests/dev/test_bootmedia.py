"""Boot media: Debian's arm64 kernel, busybox and the initramfs builder (no QEMU)."""

from __future__ import annotations

import gzip
import subprocess

import pytest

from segway_dev import bootmedia, cache

EM_AARCH64 = 183


def _cpio(archive_gz, *args: str) -> str:
    """List/extract a gzip cpio with GNU cpio (a reader we did not write)."""
    data = gzip.decompress(archive_gz.read_bytes())
    return subprocess.run(["cpio", "--quiet", *args], input=data, capture_output=True,
                          check=True).stdout.decode()


def test_fetch_is_cached_and_idempotent(boot_media):
    again = bootmedia.fetch_boot_media()
    assert again == boot_media
    assert boot_media.kernel_image.is_relative_to(cache.cache_dir("arm64"))


def test_kernel_image_is_a_raw_arm64_image(boot_media):
    head = boot_media.kernel_image.read_bytes()[:64]
    assert head[0x38:0x3C] == b"ARM\x64"
    assert boot_media.kernel_version.endswith("-cloud-arm64")
    assert (boot_media.modules_dir / "kernel").is_dir()


def test_busybox_is_static_aarch64(boot_media):
    elf = boot_media.busybox.read_bytes()
    assert elf[:4] == b"\x7fELF"
    assert int.from_bytes(elf[18:20], "little") == EM_AARCH64
    assert b"/lib/ld-linux" not in elf[:4096]  # no program interpreter: statically linked


def test_add_modules_copies_dependencies_in_load_order(tmp_path, boot_media):
    order = bootmedia.add_modules(tmp_path, ["dm-verity", "virtio_blk"], boot_media)
    assert order.index("dm_mod") < order.index("dm_bufio") < order.index("dm_verity")
    assert order.index("virtio") < order.index("virtio_blk")
    root = tmp_path / "lib" / "modules" / boot_media.kernel_version
    dep = dict(line.split(":", 1) for line in (root / "modules.dep").read_text().splitlines())
    verity = dep["kernel/drivers/md/dm-verity.ko"].split()
    # modprobe loads the dependency list from its end: dm-mod must come after dm-bufio.
    assert verity.index("kernel/drivers/md/dm-bufio.ko") < verity.index("kernel/drivers/md/dm-mod.ko")
    for rel in dep:
        ko = (root / rel).read_bytes()
        assert ko[:4] == b"\x7fELF" and int.from_bytes(ko[18:20], "little") == EM_AARCH64


def test_add_modules_rejects_unknown_module(tmp_path, boot_media):
    with pytest.raises(bootmedia.BootMediaError, match="no module 'no-such-module'"):
        bootmedia.add_modules(tmp_path, ["no-such-module"], boot_media)


def test_initramfs_contents(tmp_path, boot_media):
    out = bootmedia.build_initramfs(tmp_path / "initramfs.cpio.gz",
                                    extra_files={"etc/segway.txt": "hello\n"},
                                    modules=["virtio_blk"], media=boot_media)
    listing = _cpio(out, "-itv")
    names = _cpio(out, "-it").split()
    for required in ("init", "bin/busybox", "bin/sh", "dev/console", "etc/segway.txt",
                     f"lib/modules/{boot_media.kernel_version}/modules.dep",
                     f"lib/modules/{boot_media.kernel_version}/kernel/drivers/block/virtio_blk.ko"):
        assert required in names
    console = next(line for line in listing.splitlines() if line.endswith(" dev/console"))
    assert console.startswith("c") and "5,   1" in console
    assert "bin/sh -> busybox" in listing

    extract = tmp_path / "x"
    extract.mkdir()
    data = gzip.decompress(out.read_bytes())
    subprocess.run(["cpio", "--quiet", "-idm", "--no-absolute-filenames", "--nonmatching", "dev/*"],
                   input=data, cwd=extract, check=True)
    init = (extract / "init").read_text()
    assert init.startswith("#!/bin/sh\n") and bootmedia.USERSPACE_MARKER in init
    assert init.rstrip().endswith("poweroff -f")
    assert (extract / "bin" / "busybox").read_bytes() == boot_media.busybox.read_bytes()


def test_initramfs_is_reproducible(tmp_path, boot_media, monkeypatch):
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1700000000")
    a = bootmedia.build_initramfs(tmp_path / "a.cpio.gz", media=boot_media)
    b = bootmedia.build_initramfs(tmp_path / "b.cpio.gz", media=boot_media)
    assert a.read_bytes() == b.read_bytes()
    c = bootmedia.build_initramfs(tmp_path / "c.cpio.gz", bootmedia.init_script("true"), media=boot_media)
    assert c.read_bytes() != a.read_bytes()


def test_initramfs_rejects_escaping_path(tmp_path, boot_media):
    with pytest.raises(bootmedia.BootMediaError, match="bad initramfs path"):
        bootmedia.build_initramfs(tmp_path / "x.cpio.gz", extra_files={"../evil": b"x"}, media=boot_media)
    assert not (tmp_path / "x.cpio.gz").exists()
