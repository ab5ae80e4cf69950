"""The QEMU device's whole chain of trust, signed by segway-sign with keys in a SoftHSM token:
TF-A BL1/BL2 (built from Debian's source with the token's ROTPK hash), OP-TEE (our TA key),
U-Boot (FIT key in its appended control tree) and Debian's kernel with ``/dev/tee0``. Every
refusal is read from the console of the stage that refuses, and no later stage may run.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from segway_dev import chain, device, fip_attacks, fit_attacks, fitbuild, verity_root

pytestmark = [pytest.mark.qemu, pytest.mark.slow, pytest.mark.timeout(1800)]

LATER = {"BL1": "BL2", "BL2": "U-Boot", "U-Boot": "Linux", "Linux": "userspace"}


@pytest.fixture(scope="module")
def dev(signer) -> device.Device:
    return device.build_device(signer.root / "device", signer.root / "pki", signer, signer.pin, verity=True,
                               progress=lambda msg: None)


def _boot(tmp_path: Path, flash: Path | bytes, fit: Path | bytes | None, name: str,
          disk_args: list[str]) -> chain.ChainResult:
    if isinstance(flash, bytes):
        path = tmp_path / f"{name}.flash.bin"
        path.write_bytes(flash)
        flash = path
    if isinstance(fit, bytes):
        path = tmp_path / f"{name}.itb"
        path.write_bytes(fit)
        fit = path
    return chain.boot(flash, tmp_path / name, fit=fit, timeout=300, extra_args=disk_args)


def _assert_refused(result: chain.ChainResult, stage: str, message: str) -> None:
    assert not result.timed_out, result.summary()
    assert result.refused_by() == stage, result.summary()
    assert any(message in line for _, line in result.refusals()), result.summary()
    assert LATER[stage] not in result.reached(), result.summary()
    assert "userspace" not in result.reached(), result.summary()


def test_signed_chain_boots_to_linux_on_the_verity_root_with_tee(dev, tmp_path):
    result = _boot(tmp_path, dev.flash, dev.fit, "good", dev.qemu_args())
    assert result.reached() == [name for name, _ in chain.STAGES], result.summary()
    assert not result.refusals(), result.summary()
    assert f"{device.TEE_MARKER}" in result.uart0.splitlines(), result.summary()
    # The layer's reader opened the root under the root hash segway-sign signed, and the root's
    # own init (after switch_root) saw it mounted read-only from dm-verity, with /dev/tee0.
    root_hash = (dev.disk.parent / "rootfs.roothash").read_text().strip()
    assert f"verity: root hash {root_hash}" in result.uart0, result.summary()
    assert verity_root.ROOT_MARKER in result.uart0.splitlines(), result.summary()
    assert "verity root: /dev/tee0 present" in result.uart0
    assert "optee: revision" in result.uart0
    # The FIT was accepted under the token's FIT key, the one built into U-Boot.
    assert f"sha256,rsa2048:{device.FIT_KEY}+ OK" in result.uart0
    assert "Primary CPU switching to normal world boot" in result.uart1


def _flash_with(dev: device.Device, fip: bytes) -> bytes:
    return chain.flash_image(dev.tfa.bl1, fip)


@pytest.mark.parametrize("entry,last,stage,message", [
    ("tb-fw", False, "BL1", "Failed to load BL2 firmware"),  # a BL2 byte
    ("tb-fw-cert", True, "BL1", "Failed to load BL2 firmware"),  # tb_fw.crt's signature
    # BL2 loads BL31 (image id 3) first: its chain starts at the trusted-key certificate.
    ("trusted-key-cert", True, "BL2", "Failed to load image id 3 (-80)"),
    ("soc-fw", False, "BL2", "Failed to load image id 3 (-80)"),  # BL31
    ("tos-fw-extra1", False, "BL2", "Failed to load image id 21 (-80)"),  # OP-TEE's pager (its code)
    ("nt-fw", False, "BL2", "Failed to load image id 5 (-80)"),  # U-Boot, its control tree included
])
def test_firmware_stage_refuses_flipped_byte(dev, tmp_path, entry, last, stage, message):
    fip = fip_attacks.flip_entry_byte(dev.fip.read_bytes(), entry, last=last)
    _assert_refused(_boot(tmp_path, _flash_with(dev, fip), dev.fit, entry, dev.qemu_args()), stage, message)


def test_bl1_refuses_chain_signed_with_another_rot_key(dev, signer, tmp_path):
    """Every certificate valid, but under a ROT key whose hash BL1 does not hold."""
    other = device.FIP_KEYS | {"--rot-key": "segway-dev-stm32"}
    keys = [a for opt, label in other.items() for a in (opt, device.key_uri(label))]
    out = tmp_path / "other-rot.fip"
    signer("fip", "sign", "--cot", "generic", *keys, "--fip", dev.fip, "--out", out, *signer.pin)
    _assert_refused(_boot(tmp_path, _flash_with(dev, out.read_bytes()), dev.fit, "other-rot", dev.qemu_args()),
                    "BL1", "Failed to load BL2 firmware")


def test_bl2_refuses_content_certificate_signed_by_wrong_key(dev, signer, tmp_path):
    """U-Boot's content certificate from a chain whose NT content key is another token key."""
    other = device.FIP_KEYS | {"--nt-fw-key": "segway-dev-fip-soc-fw"}
    keys = [a for opt, label in other.items() for a in (opt, device.key_uri(label))]
    out = tmp_path / "other-nt.fip"
    signer("fip", "sign", "--cot", "generic", *keys, "--fip", dev.fip, "--out", out, *signer.pin)
    forged = fip_attacks.replace_entry(dev.fip.read_bytes(), "nt-fw-cert",
                                       fip_attacks.entry(out.read_bytes(), "nt-fw-cert"))
    _assert_refused(_boot(tmp_path, _flash_with(dev, forged), dev.fit, "wrong-content-key", dev.qemu_args()),
                    "BL2", "Failed to load image id 5 (-80)")


def test_uboot_refuses_unsigned_fit(dev, tmp_path):
    unsigned = dev.fit.with_name("kernel-unsigned.itb")
    _assert_refused(_boot(tmp_path, dev.flash, unsigned, "unsigned-fit", dev.qemu_args()), "U-Boot",
                    f"Failed to verify required signature 'key-{device.FIT_KEY}'")


def test_uboot_refuses_fit_with_flipped_kernel_byte(dev, tmp_path):
    tampered = fit_attacks.flip_kernel_data(dev.fit.read_bytes())
    _assert_refused(_boot(tmp_path, dev.flash, tampered, "flipped-kernel", dev.qemu_args()), "U-Boot", "Bad Data Hash")


def test_fit_key_cannot_be_swapped_from_outside(dev, tmp_path):
    """QEMU's -dtb no longer reaches U-Boot's key: a tree holding another key under the same name,
    and a FIT signed with that key, are refused, since the control tree is inside BL33."""
    keydir = tmp_path / "keys"
    keydir.mkdir()
    key = keydir / f"{device.FIT_KEY}.key"
    subprocess.run(["openssl", "genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048",
                    "-out", str(key)], check=True, capture_output=True)
    subprocess.run(["openssl", "req", "-batch", "-new", "-x509", "-key", str(key), "-subj", "/CN=attacker",
                    "-out", str(keydir / f"{device.FIT_KEY}.crt")], check=True, capture_output=True)
    dtb = device.qemu_dtb(tmp_path / "attacker.dtb", dev.tfa.bl1)
    fitbuild.mkimage_inject_key(tmp_path / "attacker.dtb", keydir, key_name_hint=device.FIT_KEY, required=True)
    # Packed, as TF-A's BL2 needs room to add its PSCI nodes to the tree QEMU loads.
    subprocess.run(["dtc", "-q", "-I", "dtb", "-O", "dtb", "-o", str(tmp_path / "attacker.dtb"),
                    str(tmp_path / "attacker.dtb")], check=True)
    fit = tmp_path / "attacker.itb"
    fit.write_bytes(dev.fit.with_name("kernel-unsigned.itb").read_bytes())
    fitbuild.mkimage_sign(fit, keydir, source_date_epoch=1700000000)
    assert dtb  # the dump worked
    result = chain.boot(dev.flash, tmp_path / "dtb-swap", fit=fit, timeout=300,
                        extra_args=["-dtb", str(tmp_path / "attacker.dtb"), *dev.qemu_args()])
    _assert_refused(result, "U-Boot", f"rsa2048:{device.FIT_KEY}-")


def test_kernel_refuses_flipped_verity_data_block(dev, tmp_path):
    """The FIT and its env are intact; one bit of a root file system block is not: dm-verity in
    Debian's kernel refuses the block, and the root is never mounted."""
    flipped = tmp_path / "rootfs-flipped.verity.img"
    flipped.write_bytes(verity_root.flip_data_block(dev.disk.read_bytes(), dev.payload_block))
    result = _boot(tmp_path, dev.flash, dev.fit, "flipped-verity-block", dev.qemu_args(flipped))
    _assert_refused(result, "Linux", f"data block {dev.payload_block} is corrupted")
    assert "VERITY-READ-ERROR" in result.uart0 and verity_root.ROOT_MARKER not in result.uart0
