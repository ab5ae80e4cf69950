"""Fixtures for the QEMU/U-Boot proof harness tests.

Keys are PEM RSA-2048 files made by openssl and FITs are signed by Debian's mkimage: the harness is
tested against tools we did not write before it is used on segway-sign's output.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from segway_dev import bootmedia, fitbuild, qemu

REPO = Path(__file__).resolve().parents[2]
SEGWAY_SIGN = REPO / ".venv" / "bin" / "segway-sign"
SOURCE_DATE_EPOCH = 1700000000
KEY_NAME = "dev"
ARCHES = ("arm64", "arm")

# /init for the arm64 boot test: the marker only appears if the modules a dm-verity root needs
# load from the initramfs.
MODULES = ("dm-verity", "virtio_blk")
BOOT_INIT = bootmedia.init_script(
    "modprobe dm-verity && modprobe virtio_blk && grep -q '^dm_verity ' /proc/modules && "
    f"grep -q '^virtio_blk ' /proc/modules && echo {bootmedia.USERSPACE_MARKER}"
)


def make_rsa_key(keydir: Path, name: str = KEY_NAME) -> Path:
    """``<keydir>/<name>.key`` (PEM RSA-2048) and a self-signed ``<name>.crt``, as mkimage wants."""
    keydir.mkdir(parents=True, exist_ok=True)
    subprocess.run(["openssl", "genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048",
                    "-out", str(keydir / f"{name}.key")], check=True, capture_output=True)
    subprocess.run(["openssl", "req", "-batch", "-new", "-x509", "-key", str(keydir / f"{name}.key"),
                    "-subj", f"/CN={name}", "-days", "3650", "-out", str(keydir / f"{name}.crt")],
                   check=True, capture_output=True)
    return keydir


@pytest.fixture(scope="session")
def keydir(tmp_path_factory) -> Path:
    return make_rsa_key(tmp_path_factory.mktemp("keys"))


@pytest.fixture(scope="session")
def other_keydir(tmp_path_factory) -> Path:
    """A different RSA key with the same name hint: signatures made with it must be refused."""
    return make_rsa_key(tmp_path_factory.mktemp("otherkeys"))


@pytest.fixture(scope="session")
def boot_media() -> bootmedia.BootMedia:
    return bootmedia.fetch_boot_media()


@pytest.fixture(scope="session")
def qemu_dtbs(tmp_path_factory) -> dict[str, Path]:
    """QEMU's own device tree per arch, dumped with the boot options (no key in it)."""
    out = tmp_path_factory.mktemp("dtb")
    return {arch: qemu.dump_control_dtb(arch, out / f"qemu-{arch}.dtb") for arch in ARCHES}


def _control_dtb(dump: Path, out: Path, keydir: Path, required: bool) -> Path:
    shutil.copyfile(dump, out)
    return fitbuild.mkimage_inject_key(out, keydir, key_name_hint=KEY_NAME, required=required)


@pytest.fixture(scope="session")
def control_dtbs(qemu_dtbs, keydir, tmp_path_factory) -> dict[str, Path]:
    """Control DTB per arch with ``/signature/key-dev`` and ``required = "conf"``."""
    out = tmp_path_factory.mktemp("control")
    return {arch: _control_dtb(dump, out / f"control-{arch}.dtb", keydir, True)
            for arch, dump in qemu_dtbs.items()}


@pytest.fixture(scope="session")
def optional_key_dtbs(qemu_dtbs, keydir, tmp_path_factory) -> dict[str, Path]:
    """Control DTB per arch with the key but without ``required``."""
    out = tmp_path_factory.mktemp("optional")
    return {arch: _control_dtb(dump, out / f"optional-{arch}.dtb", keydir, False)
            for arch, dump in qemu_dtbs.items()}


@pytest.fixture(scope="session")
def kernel_fit(boot_media, qemu_dtbs, keydir, tmp_path_factory) -> Path:
    """arm64 kernel FIT (Debian cloud kernel + QEMU's tree + busybox initramfs), mkimage-signed."""
    out = tmp_path_factory.mktemp("kernelfit")
    initramfs = bootmedia.build_initramfs(out / "initramfs.cpio.gz", BOOT_INIT, modules=MODULES,
                                          media=boot_media)
    fit = fitbuild.build_fit(
        out / "kernel.itb",
        fitbuild.FitImages(boot_media.kernel_image, qemu_dtbs["arm64"], initramfs),
        arch="arm64", source_date_epoch=SOURCE_DATE_EPOCH)
    fitbuild.mkimage_sign(fit, keydir, source_date_epoch=SOURCE_DATE_EPOCH)
    return fit


@pytest.fixture(scope="session")
def tiny_fits(keydir, tmp_path_factory) -> dict[str, Path]:
    """Small mkimage-signed FIT per arch: for signature checks, never executed."""
    out = tmp_path_factory.mktemp("tinyfit")
    fits = {}
    for arch in ARCHES:
        fit = fitbuild.build_tiny_fit(out / f"tiny-{arch}.itb", arch=arch,
                                      source_date_epoch=SOURCE_DATE_EPOCH)
        fitbuild.mkimage_sign(fit, keydir, source_date_epoch=SOURCE_DATE_EPOCH)
        fits[arch] = fit
    return fits


@pytest.fixture(scope="session")
def signed_fits(kernel_fit, tiny_fits) -> dict[str, Path]:
    """The FIT the attack tests tamper with: the real kernel FIT on arm64, the tiny one on arm."""
    return {"arm64": kernel_fit, "arm": tiny_fits["arm"]}


class Signer:
    """segway-sign against a development token of its own under ``root`` (the secure-world chain's
    tests: tests/dev/test_chain.py, tests/dev/test_chain_optee_ta.py)."""

    def __init__(self, root: Path) -> None:
        self.env = dict(os.environ, SEGWAY_DEV_HSM_DIR=str(root / "hsm"), SOURCE_DATE_EPOCH=str(SOURCE_DATE_EPOCH))
        for var in ("SOFTHSM2_CONF", "SEGWAY_PKCS11_MODULE", "SEGWAY_PIN_FILE"):
            self.env.pop(var, None)
        self.pin = ["--pin-file", str(root / "hsm" / "user.pin")]

    def __call__(self, *args) -> str:
        res = subprocess.run([str(SEGWAY_SIGN), *map(str, args)], env=self.env, capture_output=True,
                             text=True)
        assert res.returncode == 0, f"segway-sign {' '.join(map(str, args[:2]))}: {res.stderr.strip()}"
        return res.stdout


@pytest.fixture(scope="module")
def signer(tmp_path_factory) -> Signer:
    """A development token after the ceremony (``pki init conf/pki-dev.yaml``), one per test module."""
    root = tmp_path_factory.mktemp("chain")
    sign = Signer(root)
    sign("token", "init-dev")
    sign("pki", "init", REPO / "conf" / "pki-dev.yaml", "--out", root / "pki", *sign.pin)
    sign.root = root
    return sign
