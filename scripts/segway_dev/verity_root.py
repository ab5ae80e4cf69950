"""A dm-verity root for the QEMU device, opened by the layer's own initramfs reader.

The root file system (busybox and an ``/sbin/init`` that reports the read-only verity mount) is
signed by ``segway-sign verity sign --appended`` with the token's verity key: data, then the hash
tree, on one virtio disk, as the image's ``rootfs-a`` partition holds it. ``verity.env`` and
``roothash`` go into the initramfs, inside the signed FIT. There the layer's ``segwayverity``
module (``meta-segway/recipes-core/initrdscripts/files/segwayverity``, not a copy) parses the env
strictly and fills in the device, and Debian's ``dmsetup`` loads exactly that table. Debian's
kernel trusts only Debian's keys, so the root hash's PKCS#7 signature is checked on the host
(``segway-sign verity verify``), not by this kernel.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path
from typing import Callable

from . import guest_packages

REPO_ROOT = Path(__file__).resolve().parents[2]
LAYER_MODULE = REPO_ROOT / "meta-segway/recipes-core/initrdscripts/files/segwayverity"
LAYER_MODULE_PATH = "init.d/85-segwayverity"  # where initramfs-module-segway-verity installs it
ENV_DIR = "usr/share/segway/verity"  # where segway-sign's release puts verity.env (fitprep)
ROOT_MARKER = "SEGWAY-VERITY-ROOT-OK"
DMSETUP = {"dmsetup": "2:1.02.205-2"}  # trixie, with its library closure
# -drive if=virtio is PCI on virt; ext4 asks the crypto API for crc32c, which modprobe cannot infer.
MODULES = ("virtio_mmio", "virtio_pci", "virtio_blk", "dm_verity", "crc32c_generic", "ext4")
ROOTFS_SIZE = "8M"

# The device-mapper name the image's initramfs gives the root (segwayverity, oeqa's check).
DM_NAME = "rootfs"


def init_body(read_all: bool = True) -> str:
    """/init body: open the verity root from the env the FIT carried, (``read_all``) read it whole
    so a bad block shows at once, switch to it."""
    read = rf"""# dm-verity checks lazily: read everything once, so a bad block shows here.
if ! dd if=/dev/mapper/{DM_NAME} of=/dev/null bs=1M 2>/dev/null; then
    echo VERITY-READ-ERROR; dmesg | grep -i verity | tail -n 3; poweroff -f
fi
""" if read_all else ""
    return rf"""for m in {' '.join(MODULES)}; do modprobe $m; done
i=0; while [ ! -b /dev/vda ] && [ $i -lt 100 ]; do sleep 0.1; i=$((i+1)); done
. /{LAYER_MODULE_PATH}
if ! segwayverity_load /{ENV_DIR} /dev/vda; then
    echo "$SEGWAY_VERITY_ERROR"; echo VERITY-ENV-REFUSED; poweroff -f
fi
echo "verity: root hash $SEGWAY_VERITY_ROOT_HASH"
export DM_DISABLE_UDEV=1
/usr/sbin/dmsetup create --readonly {DM_NAME} --table "$SEGWAY_VERITY_TABLE" || {{ echo VERITY-OPEN-FAILED; poweroff -f; }}
{read}mkdir -p /mnt
mount -t ext4 -o ro /dev/mapper/{DM_NAME} /mnt || {{ echo VERITY-MOUNT-FAILED; poweroff -f; }}
test -c /dev/tee0 && mount -t devtmpfs devtmpfs /mnt/dev
exec switch_root /mnt /sbin/init
"""


def root_init(marker: str) -> str:
    """The root file system's /sbin/init: the verity mount, /dev/tee0, then ``marker``."""
    return f"""#!/bin/busybox sh
/bin/busybox mount -t proc proc /proc
/bin/busybox grep -q '^/dev/mapper/{DM_NAME} / ext4 ro' /proc/mounts && /bin/busybox echo {ROOT_MARKER}
/bin/busybox test -c /dev/tee0 && /bin/busybox echo "verity root: /dev/tee0 present"
/bin/busybox echo {marker}
/bin/busybox poweroff -f
"""


def make_rootfs(path: Path, busybox: Path, marker: str) -> int:
    """An ext4 image with busybox, /sbin/init and a payload file; returns the file system block of
    the payload's first block (what a data-block attack flips)."""
    stage = path.with_suffix(".d")
    shutil.rmtree(stage, ignore_errors=True)
    for d in ("bin", "sbin", "proc", "dev"):
        (stage / d).mkdir(parents=True, exist_ok=True)
    shutil.copyfile(busybox, stage / "bin" / "busybox")
    os.chmod(stage / "bin" / "busybox", 0o755)
    (stage / "sbin" / "init").write_text(root_init(marker))
    os.chmod(stage / "sbin" / "init", 0o755)
    (stage / "payload.bin").write_bytes(bytes((i * 131 + 7) & 0xFF for i in range(256 * 1024)))
    subprocess.run(["mkfs.ext4", "-q", "-F", "-b", "4096", "-E", "root_owner=0:0", "-d", str(stage),
                    str(path), ROOTFS_SIZE], check=True, capture_output=True,
                   env=dict(os.environ, E2FSPROGS_FAKE_TIME="1700000000"))
    out = subprocess.run(["debugfs", "-R", "bmap /payload.bin 10", str(path)], capture_output=True,
                         text=True, check=True)
    return int(out.stdout.strip().splitlines()[-1])


def sign_rootfs(sign: Callable[..., str], image: Path, out_dir: Path, key_uri: str, cert: Path,
                pin_args) -> Path:
    """``segway-sign verity sign --appended`` (checked with ``verity verify``); the output directory."""
    sign("verity", "sign", "--key", key_uri, "--cert", cert, "--in", image, "--out-dir", out_dir,
         "--appended", "--salt", "random", "--no-progress", "--force", *pin_args)
    sign("verity", "verify", "--cert", cert, out_dir)
    return out_dir


def initramfs_files(verity_dir: Path) -> dict:
    """The layer's reader, the env and root hash it reads, and Debian's dmsetup with its libraries."""
    guest = guest_packages.fetch(DMSETUP)
    files = dict(guest_packages.initramfs_files(guest, ["usr/sbin/dmsetup"]))
    files[LAYER_MODULE_PATH] = LAYER_MODULE
    # Named as the release's FIT step puts them into the initramfs (release/fitprep.py).
    files[f"{ENV_DIR}/verity.env"] = verity_dir / "verity.env"
    files[f"{ENV_DIR}/roothash"] = verity_dir / "rootfs.roothash"
    files[f"{ENV_DIR}/roothash.p7s"] = verity_dir / "rootfs.roothash.p7s"
    return files


def disk_args(image: Path) -> list[str]:
    return ["-drive", f"if=virtio,format=raw,readonly=on,file={image}"]


def flip_data_block(image: bytes, block: int, block_size: int = 4096) -> bytes:
    """The signed image with one bit of data block ``block`` flipped (the data comes first)."""
    out = bytearray(image)
    out[block * block_size + 100] ^= 0x01
    return bytes(out)
