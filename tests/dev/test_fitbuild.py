"""Unsigned FIT building and mkimage signing (no QEMU)."""

from __future__ import annotations

import subprocess

import libfdt
import pytest

from segway_dev import fitbuild

SOURCE_DATE_EPOCH = 1700000000


def _mkimage_list(fit) -> str:
    return subprocess.run(["mkimage", "-l", str(fit)], capture_output=True, text=True, check=True).stdout


def test_tiny_fit_layout(tmp_path):
    fit = fitbuild.build_tiny_fit(tmp_path / "t.itb", arch="arm", source_date_epoch=SOURCE_DATE_EPOCH)
    fdt = libfdt.Fdt(fit.read_bytes())
    assert fdt.getprop(0, "timestamp").as_uint32() == SOURCE_DATE_EPOCH
    conf = fdt.path_offset("/configurations/conf-1")
    assert fdt.getprop(fdt.path_offset("/configurations"), "default").as_str() == "conf-1"
    sig = fdt.path_offset("/configurations/conf-1/signature-1")
    assert fdt.getprop(sig, "algo").as_str() == "sha256,rsa2048"
    assert fdt.getprop(sig, "key-name-hint").as_str() == "dev"
    assert fdt.getprop(sig, "sign-images").as_stringlist() == ["kernel", "fdt", "ramdisk"]
    for kind, image in (("kernel", "kernel-1"), ("fdt", "fdt-1"), ("ramdisk", "ramdisk-1")):
        assert fdt.getprop(conf, kind).as_str() == image
        node = fdt.path_offset(f"/images/{image}")
        assert fdt.getprop(node, "arch").as_str() == "arm"
        assert fdt.getprop(fdt.path_offset(f"/images/{image}/hash-1"), "algo").as_str() == "sha256"
    kernel = fdt.path_offset("/images/kernel-1")
    assert fdt.getprop(kernel, "load").as_uint32() == fitbuild.KERNEL_LOAD["arm"]
    listing = _mkimage_list(fit)
    assert "Sign value:   unavailable" in listing


def test_build_is_reproducible(tmp_path):
    a = fitbuild.build_tiny_fit(tmp_path / "a.itb", arch="arm64", source_date_epoch=SOURCE_DATE_EPOCH)
    b = fitbuild.build_tiny_fit(tmp_path / "b.itb", arch="arm64", source_date_epoch=SOURCE_DATE_EPOCH)
    assert a.read_bytes() == b.read_bytes()
    c = fitbuild.build_tiny_fit(tmp_path / "c.itb", arch="arm64", source_date_epoch=SOURCE_DATE_EPOCH + 1)
    assert c.read_bytes() != a.read_bytes()


def test_mkimage_sign_writes_a_signature(tmp_path, keydir):
    fit = fitbuild.build_tiny_fit(tmp_path / "t.itb", source_date_epoch=SOURCE_DATE_EPOCH)
    fitbuild.mkimage_sign(fit, keydir)
    listing = _mkimage_list(fit)
    assert "Sign algo:    sha256,rsa2048:dev" in listing
    assert "Sign value:   unavailable" not in listing


def test_mkimage_sign_refuses_missing_key(tmp_path):
    fit = fitbuild.build_tiny_fit(tmp_path / "t.itb", source_date_epoch=SOURCE_DATE_EPOCH)
    before = fit.read_bytes()
    with pytest.raises(fitbuild.FitBuildError, match="signing key file missing"):
        fitbuild.mkimage_sign(fit, tmp_path / "nokeys")
    assert fit.read_bytes() == before


def test_build_fit_missing_input_leaves_no_output(tmp_path):
    images = fitbuild.FitImages(tmp_path / "nope", tmp_path / "nope.dtb")
    with pytest.raises(fitbuild.FitBuildError, match="missing input file"):
        fitbuild.build_fit(tmp_path / "out.itb", images)
    assert not (tmp_path / "out.itb").exists()
