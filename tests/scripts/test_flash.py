"""scripts/flash-stm32mp1 and scripts/flash-imx: verify the release, put the signed artifacts into the
wic (checked with debugfs and bmaptool), flash layout / uuu script (checked with uuu -dry)."""

from __future__ import annotations

import json
import os
import re
import struct
import subprocess
import uuid
import zlib
from pathlib import Path

import pytest

from tests.signing.release.release_fixtures import FileKeys, make_deploy, plan_doc, write_plan
from segway_dev import fitbuild
from segway_sign import flash
from segway_sign.errors import InputError
from segway_sign.formats.stm32 import header as stm32
from segway_sign.release import steps
from segway_sign.release.plan import load_plan
from segway_sign.release.runner import run_release

REPO = Path(__file__).resolve().parents[2]

MIB = 1 << 20
PARTS = {"stm32mp1": [("fsbl1", 256 << 10), ("fsbl2", 256 << 10), ("metadata1", 256 << 10), ("metadata2", 256 << 10),
                      ("fip-a", 2 * MIB), ("fip-b", 2 * MIB),
                      ("bootfs", 8 * MIB), ("rootfs", 4 * MIB), ("rootfs-hash", 1 * MIB)],
         "imx": [("bootfs", 8 * MIB), ("rootfs", 4 * MIB), ("rootfs-hash", 1 * MIB)]}


# The build's ST first-stage layout (segway-image.bb, after ST's wks): FIP partition type and the
# unique GUIDs of fip-a/fip-b, which TF-A's FWU metadata names.
IMAGE_RECIPE = (REPO / "meta-segway/recipes-core/images/segway-image.bb").read_text()
FIP_TYPE, FIP_A_UUID = re.search(r"--part-name=fip-a .*?--part-type (\S+) .*?--uuid (\S+)", IMAGE_RECIPE).groups()
FIP_B_UUID = re.search(r"--part-name=fip-b .*?--uuid (\S+)", IMAGE_RECIPE).group(1)


def fwu_metadata_bin(banks=(FIP_A_UUID, FIP_B_UUID), active=0, version=1) -> bytes:
    """PSA FWU metadata v1 (Arm DEN0118; TF-A include/drivers/fwu/fwu_metadata.h): one image, the FIP,
    in two banks; UUIDs in GUID byte order; CRC-32 over everything after it; padded as ST's is."""
    body = struct.pack("<III", version, active, active)
    body += uuid.UUID(FIP_TYPE).bytes_le + uuid.uuid4().bytes_le
    for bank in banks:
        body += uuid.UUID(bank).bytes_le + struct.pack("<II", 1, 0)
    return (struct.pack("<I", zlib.crc32(body)) + body).ljust(4096, b"\0")


def make_wic(path: Path, board: str, fit_name: str, work: Path) -> None:
    """A GPT disk image as wic lays it out, with an ext4 bootfs holding the unsigned FIT."""
    with open(path, "wb") as f:
        f.truncate(32 * MIB)
    args = ["sgdisk", "-a", "1"]
    start = 4096 if board == "imx" else 34  # i.MX: leave the first 2 MiB to the boot image
    for i, (name, size) in enumerate(PARTS[board], 1):
        args += [f"-n{i}:{start}:+{size // 512 - 1}", f"-c{i}:{name}"]
        start += size // 512
    subprocess.run(args + [str(path)], check=True, capture_output=True)
    boot = work / "bootfs.d"
    boot.mkdir()
    (boot / fit_name).write_bytes(b"unsigned FIT placeholder" * 100)
    (boot / "extlinux.conf").write_text("label segway\n")
    subprocess.run(["mkfs.ext4", "-q", "-F", "-d", str(boot), str(work / "bootfs.ext4"), "8M"], check=True)
    part = {p.name: p for p in flash.read_gpt(path)}["bootfs"]
    with open(path, "r+b") as f:
        f.seek(part.offset)
        f.write((work / "bootfs.ext4").read_bytes())
    subprocess.run(["bmaptool", "create", "-o", str(path) + ".bmap", str(path)], check=True)


def make_release(tmp: Path, board: str, with_wic: bool = True, metadata: bytes | None = None) -> tuple[Path, Path]:
    """A signed release; ``with_wic``: the build's wic is in it (else: the deferred-build shape, an
    appended verity image and no disk image). STM32MP1 releases carry TF-A's FWU metadata
    (``metadata``, default: valid for the build's FIP partitions; b"" leaves the step out)."""
    deploy = make_deploy(tmp)
    fitbuild.build_tiny_fit(deploy / "fitImage", arch="arm64")
    (deploy / "fitImage.its").unlink()
    for f in ("disk.wic", "disk.wic.bmap"):
        (deploy / f).unlink()
    keys = FileKeys(tmp)
    doc = plan_doc(keys.uris)
    if with_wic:
        make_wic(deploy / "disk.wic", board, "fitImage", tmp)
    else:
        doc["steps"] = [s for s in doc["steps"] if s["id"] != "disk"]
        doc["steps"][0]["options"]["layout"] = "appended"
    doc["steps"] += [{"id": "kernel-fit", "type": "fit", "key": "fit",
                      "inputs": {"fit": "fitImage", "verity_env": "step:rootfs-verity/verity.env"},
                      "options": {"verity_env_in": "initramfs", "key_name_hint": "dev"}}]
    if board == "stm32mp1":
        (deploy / "tf-a-stm32mp157c-dk2.stm32").write_bytes(stm32.create(
            os.urandom(60000), entry_point=0x2FFC2500, load_address=0x2FFC2400, binary_type=0x10))
        (tmp / "nt-fw.bin").write_bytes(os.urandom(300000))
        (tmp / "tos-fw.bin").write_bytes(os.urandom(30000))
        subprocess.run(["fiptool", "create", "--tos-fw", str(tmp / "tos-fw.bin"), "--nt-fw", str(tmp / "nt-fw.bin"),
                        str(deploy / "fip-stm32mp157c-dk2.bin")], check=True)
        doc["steps"] += [{"id": "tfa-bl2", "type": "stm32", "key": "stm32-rot",
                          "inputs": {"image": "tf-a-stm32mp157c-dk2.stm32"}},
                         {"id": "fip", "type": "fip", "key": "stm32-rot",  # BL2's key: one PKH
                          "inputs": {"fip": "fip-stm32mp157c-dk2.bin"}}]
        metadata = fwu_metadata_bin() if metadata is None else metadata
        if metadata:
            (deploy / "metadata.bin").write_bytes(metadata)
            doc["steps"] += [{"id": "fwu-metadata", "type": "copy", "inputs": {"metadata": "metadata.bin"}}]
    else:
        # Stand-in: the HAB step type is not wired into releases yet; "copy" marks it as unsigned.
        (deploy / "imx-boot.bin").write_bytes(os.urandom(900000))
        doc["steps"] += [{"id": "imx-boot", "type": "copy", "inputs": {"image": "imx-boot.bin"}}]
    plan = load_plan(write_plan(tmp / "plan.yaml", doc), set(steps.REGISTRY))
    run_release(plan, deploy, tmp / "rel", keys.open_key, keys.certs)
    return tmp / "rel", keys.certs


def script(name: str, *args) -> subprocess.CompletedProcess:
    return subprocess.run([str(REPO / "scripts" / name), *map(str, args)], capture_output=True, text=True,
                          timeout=300)


@pytest.fixture
def stm32_release(tmp_path):
    return make_release(tmp_path, "stm32mp1")


@pytest.fixture
def imx_release(tmp_path):
    return make_release(tmp_path, "imx")


def sgdisk_info(disk: Path, number: int) -> dict[str, str]:
    out = subprocess.run(["sgdisk", "-i", str(number), str(disk)], capture_output=True, text=True, check=True).stdout
    return dict(line.split(": ", 1) for line in out.splitlines() if ": " in line)


@pytest.mark.parametrize("metadata,error", [
    (b"", "the release has no 'fwu-metadata' step"),
    (bytes(b ^ 0xFF if i == 20 else b for i, b in enumerate(fwu_metadata_bin())), "FWU metadata CRC-32 does not match"),
    (fwu_metadata_bin(version=2), "FWU metadata version 2 is not supported"),
    (b"\0" * 40, "FWU metadata is 40 bytes"),
])
def test_stm32_disk_needs_valid_fwu_metadata(tmp_path, metadata, error):
    """ST's TF-A boots with firmware update on (meta-st-stm32mp's "fw-update"): no disk without metadata."""
    rel, certs = make_release(tmp_path, "stm32mp1", with_wic=False, metadata=metadata)
    work = tmp_path / "work"
    work.mkdir()
    with pytest.raises(InputError, match=re.escape(error)):
        flash.signed_disk(flash.Release.open(rel, certs), "stm32mp1", tmp_path / "d.wic", False, work)
    assert not (tmp_path / "d.wic").exists()


@pytest.mark.parametrize("board", ["stm32mp1", "imx"])
def test_disk_built_from_a_release_without_wic(tmp_path, board):
    """Deferred builds deploy no wic: the segway A/B disk is laid out from the release itself."""
    rel, certs = make_release(tmp_path, board, with_wic=False)
    release = flash.Release.open(rel, certs)
    work = tmp_path / "work"
    work.mkdir()
    disk = tmp_path / "segway.wic"
    placed = flash.signed_disk(release, board, disk, board == "imx", work)
    parts = {p.name: p for p in flash.read_gpt(disk)}
    names = ["boot-a", "boot-b", "rootfs-a", "rootfs-b", "data"]
    if board == "stm32mp1":
        names = ["fsbl1", "fsbl2", "metadata1", "metadata2", "fip-a", "fip-b", "u-boot-env"] + names
        assert parts["fsbl1"].offset == 0x4400
        # ST's offsets (FlashLayout_sdcard_*.tsv): TF-A finds the metadata by name and each FIP bank by
        # the partition GUID the metadata names; sgdisk reads the table back.
        assert [parts[n].offset for n in names[:5]] == [0x4400, 0x44400, 0x84400, 0xC4400, 0x104400]
        for name, guid in (("fip-a", FIP_A_UUID), ("fip-b", FIP_B_UUID)):
            info = sgdisk_info(disk, names.index(name) + 1)
            assert info["Partition GUID code"].startswith(FIP_TYPE.upper()), info
            assert info["Partition unique GUID"] == guid.upper(), info
        for name in ("metadata1", "metadata2"):
            assert sgdisk_info(disk, names.index(name) + 1)["Partition GUID code"].startswith(
                "8DA63339-0007-60C0-C436-083AC8230908")  # sgdisk 8301: Linux reserved, as --part-type 0x8301
            flash.extract_partition(disk, name, tmp_path / f"{name}.img")
            assert (tmp_path / f"{name}.img").read_bytes()[:4096] == (rel / "fwu-metadata" / "metadata.bin").read_bytes()
        # ST's U-Boot finds its environment partition by this name and keeps two 8 KiB copies at its end
        assert parts["u-boot-env"].size == 512 << 10
        flash.extract_partition(disk, "u-boot-env", tmp_path / "env.img")
        assert not any((tmp_path / "env.img").read_bytes())
    else:
        # past U-Boot's raw environment: u-boot-fslc at 4 MiB (+4 KiB), u-boot-imx at 7 MiB (+16 KiB)
        assert min(p.offset for p in parts.values()) == 8 * MIB
        boot = (rel / "imx-boot" / "imx-boot.bin").read_bytes()
        assert disk.read_bytes()[0x8400:0x8400 + len(boot)] == boot
    assert sorted(parts, key=lambda n: parts[n].offset) == names
    assert "fitImage -> boot-a:/fitImage" in placed
    # The FAT boot partitions hold the signed FIT (mtools reads it back).
    flash.extract_partition(disk, "boot-b", tmp_path / "boot-b.vfat")
    fit = subprocess.run(["mtype", "-i", str(tmp_path / "boot-b.vfat"), "::fitImage"], capture_output=True)
    assert fit.stdout == (rel / "kernel-fit" / "fitImage").read_bytes()
    # veritysetup accepts each root slot (appended tree, superblock at the env's hash offset).
    env = next(st for st in json.loads((rel / "manifest.json").read_text())["steps"]
               if st["id"] == "rootfs-verity")["details"]
    envfile = (rel / "rootfs-verity" / "verity.env").read_text()
    offset = [l.split("=")[1] for l in envfile.splitlines() if l.startswith("VERITY_HASH_OFFSET=")][0]
    for slot in ("rootfs-a", "rootfs-b"):
        flash.extract_partition(disk, slot, tmp_path / f"{slot}.img")
        v = subprocess.run(["veritysetup", "verify", str(tmp_path / f"{slot}.img"), str(tmp_path / f"{slot}.img"),
                            env["root_hash"], f"--hash-offset={offset}"], capture_output=True, text=True)
        assert v.returncode == 0, v.stderr
    flash.extract_partition(disk, "data", tmp_path / "data.ext4")
    assert "Filesystem volume name:   data" in subprocess.run(
        ["dumpe2fs", "-h", str(tmp_path / "data.ext4")], capture_output=True, text=True).stdout
    # Sparse: the block map skips the empty space, and bmaptool reproduces the image from it.
    target = tmp_path / "card.img"
    r = subprocess.run(["bmaptool", "copy", "--bmap", f"{disk}.bmap", str(disk), str(target)], capture_output=True,
                       text=True)
    assert r.returncode == 0, r.stderr
    assert target.read_bytes() == disk.read_bytes()
    assert os.stat(disk).st_blocks * 512 < disk.stat().st_size // 2


def test_imx_dry_run_without_wic_names_the_built_disk(tmp_path):
    rel, certs = make_release(tmp_path, "imx", with_wic=False)
    r = script("flash-imx", "--certs", certs, "--usb", "--dry-run", "--allow-unsigned-boot", rel)
    assert r.returncode == 0, r.stderr
    assert "FB: flash -raw2sparse all segway-testmachine.wic" in r.stdout
    assert "uuu -dry: uuu_emmc.lst OK" in r.stdout


def test_unsigned_boot_images_are_refused(imx_release):
    rel, certs = imx_release
    r = script("flash-imx", "--certs", certs, "--usb", "--dry-run", rel)
    assert r.returncode == 1
    assert r.stderr.strip() == ("flash-imx: error: release step 'imx-boot' is of type copy, not a signed "
                                "boot image (--allow-unsigned-boot for an open development board)")


@pytest.mark.parametrize("target,fsbl1,fsbl2", [("sdcard", "0x00004400", "0x00044400"), ("emmc", "boot1", "boot2")])
def test_stm32_dry_run_prints_the_flash_layout(stm32_release, target, fsbl1, fsbl2):
    rel, certs = stm32_release
    r = script("flash-stm32mp1", "--certs", certs, "--usb", "--target", target, "--dry-run", rel)
    assert r.returncode == 0, r.stderr
    out = r.stdout
    assert "signatures and manifest verified (testmachine)" in out
    rows = [line.split("\t") for line in out.split(f"--- flashlayout_{target}.tsv ---\n")[1].split("---")[0].splitlines()]
    assert rows[0] == ["#Opt", "Id", "Name", "Type", "IP", "Offset", "Binary"]
    by_name = {r[2]: r for r in rows[1:]}
    ip = "mmc0" if target == "sdcard" else "mmc1"
    assert by_name["fsbl-boot"] == ["-", "0x01", "fsbl-boot", "Binary", "none", "0x0", "tf-a-stm32mp157c-dk2.stm32"]
    assert by_name["fsbl1"][4:] == [ip, fsbl1, "tf-a-stm32mp157c-dk2.stm32"]
    assert by_name["fsbl2"][4:] == [ip, fsbl2, "tf-a-stm32mp157c-dk2.stm32"]
    assert by_name["metadata1"][3:] == ["FWU_MDATA", ip, "0x00084400", "metadata.bin"]
    assert by_name["metadata2"][3:] == ["FWU_MDATA", ip, "0x000c4400", "metadata.bin"]
    assert by_name["fip-a"][3:] == ["FIP", ip, "0x00104400", "fip-stm32mp157c-dk2.bin"]
    assert by_name["rootfs"][6] == "rootfs.ext4" and by_name["rootfs-hash"][6] == "rootfs.hashtree"
    assert by_name["bootfs"][3:] == ["FileSystem", ip, by_name["bootfs"][5], "bootfs.img"]
    assert f"would run: (cd {rel}-flash && STM32_Programmer_CLI -c port=usb1 -w flashlayout_{target}.tsv)" in out
    assert not Path(f"{rel}-flash").exists()  # a dry run writes nothing


def test_signed_wic_holds_the_signed_artifacts(stm32_release, tmp_path):
    rel, certs = stm32_release
    release = flash.Release.open(rel, certs)
    work = tmp_path / "work"
    work.mkdir()
    out = tmp_path / "signed.wic"
    placed = flash.signed_wic(release, "stm32mp1", out, False, work)
    assert "fitImage -> bootfs:/fitImage" in placed
    parts = {p.name: p for p in flash.read_gpt(out)}
    raw = out.read_bytes()

    def part(name, length):
        return raw[parts[name].offset: parts[name].offset + length]

    tfa = (rel / "tfa-bl2" / "tf-a-stm32mp157c-dk2.stm32").read_bytes()
    assert part("fsbl1", len(tfa)) == tfa and part("fsbl2", len(tfa)) == tfa
    fip = (rel / "fip" / "fip-stm32mp157c-dk2.bin").read_bytes()
    assert part("fip-a", len(fip)) == fip and part("fip-b", len(fip)) == fip
    rootfs = (rel / "rootfs-verity" / "rootfs.ext4").read_bytes()
    assert part("rootfs", len(rootfs)) == rootfs
    tree = (rel / "rootfs-verity" / "rootfs.hashtree").read_bytes()
    assert part("rootfs-hash", len(tree)) == tree
    # debugfs reads the signed FIT back out of the ext4 bootfs; the other bootfs files survive.
    flash.extract_partition(out, "bootfs", tmp_path / "bootfs.ext4")
    fit = subprocess.run(["debugfs", "-R", "cat /fitImage", str(tmp_path / "bootfs.ext4")], capture_output=True)
    assert fit.stdout == (rel / "kernel-fit" / "fitImage").read_bytes()
    ls = subprocess.run(["debugfs", "-R", "ls -l /", str(tmp_path / "bootfs.ext4")], capture_output=True, text=True)
    assert "extlinux.conf" in ls.stdout
    # bmaptool writes the image through its new block map, checking every mapped range's checksum.
    target = tmp_path / "card.img"
    r = subprocess.run(["bmaptool", "copy", "--bmap", f"{out}.bmap", str(out), str(target)],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert target.read_bytes() == raw


def test_imx_usb_dry_run_script_passes_uuu_dry(imx_release):
    rel, certs = imx_release
    r = script("flash-imx", "--certs", certs, "--usb", "--target", "emmc", "--dry-run", "--allow-unsigned-boot", rel)
    assert r.returncode == 0, r.stderr
    assert "SDP: boot -f imx-boot.bin" in r.stdout and "FB: flash -raw2sparse all disk.wic" in r.stdout
    assert "FB: ucmd mmc partconf ${emmc_dev} ${emmc_ack} 1 0" in r.stdout
    assert "uuu -dry: uuu_emmc.lst OK" in r.stdout
    assert f"would run: (cd {rel}-flash && uuu uuu_emmc.lst)" in r.stdout


def test_imx_boot_image_at_33k_and_bmaptool_command(imx_release, tmp_path):
    rel, certs = imx_release
    r = script("flash-imx", "--certs", certs, "--device", "/dev/sdz", "--dry-run", "--allow-unsigned-boot", rel)
    assert r.returncode == 0, r.stderr
    assert "imx-boot.bin -> offset 0x8400" in r.stdout
    assert f"would run: (cd {rel}-flash && bmaptool copy --bmap disk.wic.bmap disk.wic /dev/sdz)" in r.stdout
    release = flash.Release.open(rel, certs)
    work = tmp_path / "w"
    work.mkdir()
    flash.signed_wic(release, "imx", tmp_path / "s.wic", True, work)
    boot = (rel / "imx-boot" / "imx-boot.bin").read_bytes()
    assert (tmp_path / "s.wic").read_bytes()[0x8400:0x8400 + len(boot)] == boot


def test_bad_invocations_and_tampered_release(imx_release, tmp_path):
    rel, certs = imx_release
    r = script("flash-imx", "--certs", certs, "--usb", "--device", "/dev/sdz", rel)
    assert r.returncode == 2 and "exactly one of --device DEV or --usb" in r.stderr
    r = script("flash-imx", "--certs", certs, "--device", str(tmp_path / "file.img"), "--allow-unsigned-boot", rel)
    assert r.returncode == 2 and "is not a block device" in r.stderr
    (rel / "imx-boot" / "imx-boot.bin").write_bytes(b"evil")
    r = script("flash-imx", "--certs", certs, "--usb", "--dry-run", "--allow-unsigned-boot", rel)
    assert r.returncode == 1 and "imx-boot/imx-boot.bin: sha256 differs from the manifest" in r.stderr
    assert "Traceback" not in r.stderr
