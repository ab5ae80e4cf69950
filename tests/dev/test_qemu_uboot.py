"""Debian's U-Boot under QEMU accepts mkimage-signed FITs and refuses every tampered one.

arm64: the real Debian cloud kernel FIT, booted to userspace. arm (32-bit, Cortex-A7 like the
STM32MP157): a tiny FIT checked with ``bootm start`` (verification only, nothing is executed).
"""

from __future__ import annotations

import libfdt
import pytest

from segway_dev import bootmedia, fit_attacks, fitbuild, qemu

ARCHES = ("arm64", "arm")
SOURCE_DATE_EPOCH = 1700000000

pytestmark = pytest.mark.qemu


def _assert_refused(result: qemu.UBootResult) -> None:
    assert result.refused and not result.accepted, result.summary()
    assert not result.userspace, result.summary()
    assert result.statuses and result.statuses[-1] not in (None, 0), result.summary()


def test_dump_control_dtb_matches_boot_options(qemu_dtbs):
    for arch, dtb in qemu_dtbs.items():
        fdt = libfdt.Fdt(dtb.read_bytes())
        assert fdt.getprop(0, "compatible").as_str() == "linux,dummy-virt"
        memory = fdt.getprop(fdt.path_offset("/memory@40000000"), "reg")
        assert int.from_bytes(bytes(memory)[-8:], "big") == 1 << 30, arch  # -m 1G
    # Dumped with -bios: aarch64 virt then has no PL061 GPIO, which a Linux booted through
    # U-Boot would otherwise probe and panic on (see qemu.py).
    fdt = libfdt.Fdt(qemu_dtbs["arm64"].read_bytes())
    assert fdt.path_offset("/pl061@9030000", [libfdt.NOTFOUND]) == -libfdt.NOTFOUND


def test_control_dtb_carries_required_key(control_dtbs):
    for dtb in control_dtbs.values():
        fdt = libfdt.Fdt(dtb.read_bytes())
        key = fdt.path_offset("/signature/key-dev")
        assert fdt.getprop(key, "required").as_str() == "conf"
        assert fdt.getprop(key, "algo").as_str() == "sha256,rsa2048"


def test_arm64_signed_kernel_fit_reaches_userspace(control_dtbs, kernel_fit):
    result = qemu.boot_fit("arm64", control_dtbs["arm64"], kernel_fit)
    assert result.accepted, result.summary()
    assert result.userspace, result.summary()  # also proves dm-verity + virtio_blk modules load
    assert "Starting kernel" in result.log
    assert result.log_path.read_text(errors="replace").replace("\r", "") == result.log


def test_arm64_missing_marker_is_not_reported_as_userspace(control_dtbs, boot_media, qemu_dtbs,
                                                           keydir, tmp_path):
    initramfs = bootmedia.build_initramfs(tmp_path / "initramfs.cpio.gz",
                                          bootmedia.init_script("echo no marker here"), media=boot_media)
    fit = fitbuild.build_fit(tmp_path / "nomarker.itb",
                             fitbuild.FitImages(boot_media.kernel_image, qemu_dtbs["arm64"], initramfs),
                             arch="arm64", source_date_epoch=SOURCE_DATE_EPOCH)
    fitbuild.mkimage_sign(fit, keydir, source_date_epoch=SOURCE_DATE_EPOCH)
    result = qemu.boot_fit("arm64", control_dtbs["arm64"], fit)
    assert result.accepted, result.summary()
    assert "no marker here" in result.log
    assert not result.userspace, result.summary()


@pytest.mark.parametrize("arch", ARCHES)
def test_signed_fit_accepted(arch, control_dtbs, signed_fits):
    result = qemu.check_fit(arch, control_dtbs[arch], signed_fits[arch])
    assert result.accepted and result.statuses == [0], result.summary()
    assert result.refusals == []


@pytest.mark.parametrize("attack", fit_attacks.ATTACKS, ids=lambda a: a.name)
@pytest.mark.parametrize("arch", ARCHES)
def test_attack_refused(arch, attack, control_dtbs, signed_fits, tmp_path):
    fit = tmp_path / f"{attack.name}.itb"
    fit.write_bytes(attack.apply(signed_fits[arch].read_bytes()))
    _assert_refused(qemu.check_fit(arch, control_dtbs[arch], fit, attack.conf))


@pytest.mark.parametrize("arch", ARCHES)
def test_unsigned_fit_refused_with_required_key(arch, control_dtbs, signed_fits, tmp_path):
    fit = tmp_path / "unsigned.itb"
    fit.write_bytes(fit_attacks.unsigned_copy(signed_fits[arch].read_bytes()))
    _assert_refused(qemu.check_fit(arch, control_dtbs[arch], fit))


@pytest.mark.parametrize("arch", ARCHES)
def test_fit_signed_with_another_key_refused(arch, control_dtbs, other_keydir, tmp_path):
    fit = fitbuild.build_tiny_fit(tmp_path / "other.itb", arch=arch, source_date_epoch=SOURCE_DATE_EPOCH)
    fitbuild.mkimage_sign(fit, other_keydir, source_date_epoch=SOURCE_DATE_EPOCH)
    result = qemu.check_fit(arch, control_dtbs[arch], fit)
    _assert_refused(result)
    assert "Failed to verify required signature 'key-dev'" in result.log


@pytest.mark.parametrize("arch", ARCHES)
def test_harness_sees_acceptance_without_required_key(arch, optional_key_dtbs, signed_fits, tmp_path):
    """The same unsigned FIT U-Boot refuses above is loaded when the key is not required: the
    refusals above come from U-Boot's policy, not from the harness."""
    fit = tmp_path / "unsigned.itb"
    fit.write_bytes(fit_attacks.unsigned_copy(signed_fits[arch].read_bytes()))
    result = qemu.check_fit(arch, optional_key_dtbs[arch], fit)
    assert result.statuses == [0] and not result.refused, result.summary()
    assert not result.verified  # nothing was signature-checked


def test_command_timeout_is_reported_and_qemu_stopped(control_dtbs, tiny_fits, tmp_path):
    uboot = qemu.UBoot("arm", control_dtbs["arm"], tiny_fits["arm"], log_path=tmp_path / "sleep.log")
    with uboot:
        assert uboot.command("echo alive") == 0
        assert uboot.command("sleep 60", timeout=2) is None
    result = uboot.result()
    assert result.timed_out and result.statuses == [0, None] and not result.accepted
    assert uboot.proc.poll() is not None
    assert "alive" in (tmp_path / "sleep.log").read_text()


def test_qemu_stopped_when_the_caller_fails(control_dtbs, tiny_fits, tmp_path):
    with pytest.raises(RuntimeError, match="caller failed"):
        with qemu.UBoot("arm", control_dtbs["arm"], tiny_fits["arm"], log_path=tmp_path / "x.log") as uboot:
            raise RuntimeError("caller failed")
    assert uboot.proc.poll() is not None


def test_missing_fit_is_a_clear_error(control_dtbs, tmp_path):
    with pytest.raises(qemu.QemuError, match="missing file"):
        qemu.check_fit("arm", control_dtbs["arm"], tmp_path / "absent.itb")
