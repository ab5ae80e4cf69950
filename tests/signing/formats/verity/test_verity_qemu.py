"""dm-verity proof under QEMU: U-Boot verifies a FIT signed by `segway-sign release`, whose initramfs
carries the verity env; the initramfs opens the verity device from that env and boots the rootfs.

Trust chain in this proof: U-Boot checks the FIT signature, which covers the initramfs and therefore
the env (root hash, salt, sizes, dm table); dm-verity checks every rootfs block against that root hash.
The PKCS#7 root-hash signature is checked on the host before boot (`verity verify`, openssl) and is
what a kernel with our certificate in its keyring checks itself (`root_hash_sig_key_desc`). Debian's
cloud kernel trusts only its own keys, and busybox has neither openssl nor keyctl, so this initramfs
does not check it again.

The env is read by meta-segway's own initramfs module (``segwayverity``, installed where the image
installs it and sourced as initramfs-framework sources it): its strict reader parses verity.env,
checks it against roothash and fills the device into the table. The image then hands the same
parameters to ``veritysetup open`` with the signature; here Debian's arm64 veritysetup runs with
those options (without the signature) to show the kernel gets exactly the table that was read, and
Debian's arm64 dmsetup (both with their libraries and loader) loads the table. The rootfs is the
appended-layout image the layer ships (data, then the hash tree) on one virtio disk.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from segway_dev import bootmedia, cache, fitbuild, qemu
from segway_sign.formats.verity import sign as verity_sign
from segway_sign.formats.fit import keys as fit_keys
from segway_sign.formats.fit import sign as fit_format
from segway_sign.release import fitprep, steps
from segway_sign.release.plan import load_plan
from segway_sign.release.runner import run_release

pytestmark = pytest.mark.qemu

REPO = Path(__file__).resolve().parents[4]
CACHE = cache.cache_dir("arm64-dmsetup")
ROOT_MARKER = "SEGWAY-VERITY-ROOT-OK"
DMSETUP_PACKAGES = ("dmsetup", "libdevmapper1.02.1", "libc6", "libselinux1", "libudev1", "libpcre2-8-0",
                    # veritysetup, to check that the options the image passes it give the same table
                    "cryptsetup-bin", "libcryptsetup12", "libpopt0", "libuuid1", "libblkid1", "libargon2-1",
                    "libjson-c5", "libssl3")

LAYER_MODULE = REPO / "meta-segway" / "recipes-core" / "initrdscripts" / "files" / "segwayverity"
LAYER_MODULE_PATH = "init.d/85-segwayverity"  # where initramfs-module-segway-verity installs it

INIT = bootmedia.init_script(r"""
for m in virtio_mmio virtio_pci virtio_blk dm_verity; do modprobe $m; done
i=0; while [ ! -b /dev/vda ] && [ $i -lt 50 ]; do sleep 0.1; i=$((i+1)); done
. /init.d/85-segwayverity
if ! segwayverity_load /usr/share/segway/verity /dev/vda; then
    echo "$SEGWAY_VERITY_ERROR"; echo VERITY-ENV-REFUSED; poweroff -f
fi
echo "verity: root hash $SEGWAY_VERITY_ROOT_HASH"
export DM_DISABLE_UDEV=1
# The image runs veritysetup with these options and the signature (which this kernel, trusting only
# Debian's keys, cannot check): the kernel must get exactly the table that was read and checked.
mkdir -p /run/cryptsetup
if /sbin/veritysetup open /dev/vda vcheck /dev/vda "$SEGWAY_VERITY_ROOT_HASH" $SEGWAY_VERITY_OPTIONS; then
    got=$(/sbin/dmsetup table vcheck)
    /sbin/dmsetup remove vcheck
    want=$(echo "$SEGWAY_VERITY_TABLE" | sed "s#/dev/vda#$(cat /sys/block/vda/dev)#g")
    if [ "$got" = "$want" ]; then echo VERITYSETUP-TABLE-SAME; else echo "VERITYSETUP-TABLE-DIFFERS: $got"; fi
else
    echo VERITYSETUP-OPEN-FAILED
fi
if ! /sbin/dmsetup create --readonly vroot --table "$SEGWAY_VERITY_TABLE"; then
    echo VERITY-OPEN-FAILED; poweroff -f
fi
# dm-verity checks lazily: the first block read decides whether the root hash is right.
if ! dd if=/dev/mapper/vroot of=/dev/null bs=512 count=1 2>/dev/null; then
    echo VERITY-OPEN-FAILED; poweroff -f
fi
if ! dd if=/dev/mapper/vroot of=/dev/null bs=1M 2>/dev/null; then
    echo VERITY-READ-ERROR; dmesg | grep -i verity | tail -n 3; poweroff -f
fi
mount -t ext4 -o ro /dev/mapper/vroot /mnt || { echo VERITY-MOUNT-FAILED; poweroff -f; }
exec switch_root /mnt /sbin/init
""", power_off=True)

ROOT_INIT = f"""#!/bin/busybox sh
/bin/busybox mount -t proc proc /proc
/bin/busybox grep -q '^/dev/mapper/vroot / ext4 ro' /proc/mounts && /bin/busybox echo {ROOT_MARKER}
/bin/busybox poweroff -f
"""


def _apt(apt_dir: Path) -> list[str]:
    return ["-o", "APT::Architecture=arm64", "-o", "APT::Architectures=arm64",
            "-o", f"Dir::State::Lists={apt_dir / 'lists'}", "-o", f"Dir::Cache={apt_dir / 'cache'}",
            "-o", "Dir::State::status=/dev/null", "-o", "APT::Sandbox::User=root"]


def dmsetup_files() -> dict[str, Path]:
    """Debian bookworm's arm64 dmsetup and veritysetup, the shared libraries they load and the loader."""
    root = CACHE / "root"
    if not all((root / "sbin" / tool).is_file() for tool in ("dmsetup", "veritysetup")):
        apt_dir = CACHE / "apt"
        for sub in ("lists/partial", "cache/archives/partial"):
            (apt_dir / sub).mkdir(parents=True, exist_ok=True)
        subprocess.run(["apt-get", *_apt(apt_dir), "-qq", "update"], check=True, capture_output=True)
        debs = CACHE / "debs"
        shutil.rmtree(debs, ignore_errors=True)
        debs.mkdir()
        subprocess.run(["apt-get", *_apt(apt_dir), "-qq", "download", *DMSETUP_PACKAGES], cwd=debs,
                       check=True, capture_output=True)
        shutil.rmtree(root, ignore_errors=True)
        for deb in debs.glob("*.deb"):
            subprocess.run(["dpkg-deb", "-x", str(deb), str(root)], check=True)
    libdir = "lib/aarch64-linux-gnu"
    files = {"sbin/dmsetup": root / "sbin" / "dmsetup", "sbin/veritysetup": root / "sbin" / "veritysetup"}
    wanted = ("ld-linux-aarch64.so.1", "libc.so.6", "libdevmapper.so.1.02.1", "libselinux.so.1",
              "libudev.so.1", "libpcre2-8.so.0", "libm.so.6", "libcryptsetup.so.12", "libpopt.so.0",
              "libuuid.so.1", "libblkid.so.1", "libargon2.so.1", "libjson-c.so.5", "libcrypto.so.3")
    for name in wanted:
        src = next(p for p in root.rglob(name) if p.exists())
        files[f"{libdir}/{name}"] = src.resolve()
    files["lib/ld-linux-aarch64.so.1"] = files[f"{libdir}/ld-linux-aarch64.so.1"]
    return files


def make_rootfs(path: Path, busybox: Path) -> int:
    """An 8 MiB ext4 image with busybox, an /sbin/init that prints the marker, and a payload file;
    returns the filesystem block number of the payload's first block."""
    stage = path.with_suffix(".d")
    for d in ("bin", "sbin", "proc", "dev"):
        (stage / d).mkdir(parents=True, exist_ok=True)
    shutil.copyfile(busybox, stage / "bin" / "busybox")
    os.chmod(stage / "bin" / "busybox", 0o755)
    (stage / "sbin" / "init").write_text(ROOT_INIT)
    os.chmod(stage / "sbin" / "init", 0o755)
    (stage / "payload.bin").write_bytes(os.urandom(256 * 1024))
    subprocess.run(["mkfs.ext4", "-q", "-F", "-b", "4096", "-E", "root_owner=0:0", "-d", str(stage),
                    str(path), "8M"], check=True, env=dict(os.environ, E2FSPROGS_FAKE_TIME="0"))
    out = subprocess.run(["debugfs", "-R", "bmap /payload.bin 10", str(path)], capture_output=True,
                         text=True, check=True)
    return int(out.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("verity-qemu")
    media = bootmedia.fetch_boot_media()
    deploy = tmp / "deploy"
    deploy.mkdir()
    payload_block = make_rootfs(deploy / "rootfs.ext4", media.busybox)
    control = qemu.dump_control_dtb("arm64", tmp / "qemu.dtb")
    initramfs = bootmedia.build_initramfs(tmp / "initramfs.cpio.gz", INIT,
                                          {**dmsetup_files(), LAYER_MODULE_PATH: LAYER_MODULE},
                                          modules=["virtio_mmio", "virtio_pci", "virtio_blk", "dm_verity"], media=media)
    fitbuild.build_fit(deploy / "fitImage", fitbuild.FitImages(media.kernel_image, control, initramfs),
                       arch="arm64", key_name_hint="dev")
    (deploy / "fitImage.its").unlink()

    # Keys and certificates (software keys: the FIT/verity formats are the same with token keys).
    from tests.signing.release.release_fixtures import FileKeys, plan_doc, write_plan

    keys = FileKeys(tmp)
    doc = plan_doc(keys.uris)
    doc["steps"] = [s for s in doc["steps"] if s["id"] == "rootfs-verity"]
    doc["steps"][0]["options"]["layout"] = "appended"  # as segway_verity.bbclass signs the image
    doc["steps"].append({"id": "kernel-fit", "type": "fit", "key": "fit",
                         "inputs": {"fit": "fitImage", "verity_env": "step:rootfs-verity/verity.env"},
                         "options": {"verity_env_in": "initramfs", "key_name_hint": "dev"}})
    plan = load_plan(write_plan(tmp / "plan.yaml", doc), set(steps.REGISTRY))
    run_release(plan, deploy, tmp / "release", keys.open_key, keys.certs)
    fit_key = keys.keys[keys.uris["fit"]]
    control_with_key = tmp / "control.dtb"
    control_with_key.write_bytes(fit_keys.add_pubkey(control.read_bytes(), fit_key.public_key(), "dev",
                                                     required="conf"))
    return {"tmp": tmp, "release": tmp / "release", "control": control_with_key, "fit_key": fit_key,
            "payload_block": payload_block, "deploy": deploy}


def boot(setup, fit: Path, disk: Path, name: str) -> qemu.UBootResult:
    extra = ["-drive", f"if=virtio,format=raw,readonly=on,file={disk}"]
    log = setup["tmp"] / f"{name}.console.log"
    with qemu.UBoot("arm64", setup["control"], fit, log_path=log, marker=ROOT_MARKER,
                    extra_args=extra) as uboot:
        uboot.run([f'setenv bootargs "{qemu.DEFAULT_BOOTARGS}"', f"bootm {fitbuild.FIT_ADDR:#x}#conf-1"],
                  boot_last=True, boot_timeout=qemu.BOOT_TIMEOUT)
    return uboot.result()


def test_signed_fit_boots_the_verity_rootfs(setup):
    rel = setup["release"]
    res = boot(setup, rel / "kernel-fit" / "fitImage", rel / "rootfs-verity" / "rootfs.verity.img", "good")
    assert res.verified and not res.refused, res.summary()
    root = (rel / "rootfs-verity" / "rootfs.roothash").read_text()
    assert f"verity: root hash {root}" in res.log
    assert "VERITYSETUP-TABLE-SAME" in res.log, res.summary()
    assert res.userspace, res.summary()


def flipped_image(setup) -> Path:
    """The signed image with one bit of the payload flipped (the data comes first in the appended image)."""
    bad = setup["tmp"] / "flipped.verity.img"
    raw = bytearray((setup["release"] / "rootfs-verity" / "rootfs.verity.img").read_bytes())
    raw[setup["payload_block"] * 4096 + 100] ^= 0x01
    bad.write_bytes(raw)
    return bad


def test_flipped_data_block_fails_to_read(setup):
    rel = setup["release"]
    res = boot(setup, rel / "kernel-fit" / "fitImage", flipped_image(setup), "flipped")
    assert res.verified, res.summary()
    assert "VERITY-READ-ERROR" in res.log and not res.userspace, res.summary()
    assert f"data block {setup['payload_block']} is corrupted" in res.log


def _fit_with_env(setup, env: str, roothash: str) -> bytes:
    """The unsigned FIT with ``env`` and ``roothash`` in its initramfs, signed with the trusted FIT key."""
    fit = fitprep.add_env_to_initramfs((setup["deploy"] / "fitImage").read_bytes(), env,
                                       {f"{fitprep.VERITY_DIR_IN_INITRAMFS}/roothash": roothash.encode()})
    return fit_format.sign_fit(fit, setup["fit_key"], key_name_hint="dev").blob


def test_wrong_root_hash_fails_to_open(setup):
    rel = setup["release"]
    env = (rel / "rootfs-verity" / "verity.env").read_text()
    good = verity_sign.parse_env(env)["VERITY_ROOT_HASH"]
    wrong = format(int(good, 16) ^ 1, "064x")
    path = setup["tmp"] / "wrong-root.fit"
    path.write_bytes(_fit_with_env(setup, env.replace(good, wrong), wrong))
    res = boot(setup, path, rel / "rootfs-verity" / "rootfs.verity.img", "wrong-root")
    assert res.verified, res.summary()  # the FIT is validly signed: only the root hash is wrong
    assert "VERITY-OPEN-FAILED" in res.log and not res.userspace, res.summary()


def test_tampered_env_is_refused_by_the_layer_reader(setup):
    """A validly signed FIT whose env adds ignore_corruption: the initramfs reader refuses it before
    any table is loaded (the flipped block would otherwise be read as if it were good)."""
    rel = setup["release"]
    env = (rel / "rootfs-verity" / "verity.env").read_text()
    table = next(line for line in env.splitlines() if line.startswith("VERITY_TABLE="))
    path = setup["tmp"] / "ignore-corruption.fit"
    path.write_bytes(_fit_with_env(setup, env.replace(table, table + " 1 ignore_corruption"),
                                   verity_sign.parse_env(env)["VERITY_ROOT_HASH"]))
    res = boot(setup, path, flipped_image(setup), "ignore-corruption")
    assert res.verified, res.summary()
    assert "VERITY-ENV-REFUSED" in res.log and "optional arguments are refused" in res.log, res.summary()
    assert not res.userspace, res.summary()
