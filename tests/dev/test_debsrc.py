"""Pinned Debian source packages: a version the archive stopped serving and a .dsc that is not the
pinned one each end in one line naming the problem, before anything is unpacked or built."""

from __future__ import annotations

import dataclasses

import pytest

from segway_dev import debsrc


@pytest.fixture
def private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("SEGWAY_CACHE_DIR", str(tmp_path / "cache"))
    return tmp_path / "cache"


def test_unknown_package_is_named():
    with pytest.raises(debsrc.SourceError, match="no pinned source package 'linux'"):
        debsrc.source_tree("linux")


def test_a_version_the_archive_no_longer_serves_names_its_pin(private_cache, monkeypatch):
    gone = dataclasses.replace(debsrc.PINS["mbedtls"], version="3.6.0-0.1")
    monkeypatch.setitem(debsrc.PINS, "mbedtls", gone)
    with pytest.raises(debsrc.SourceError) as exc:
        debsrc.source_tree("mbedtls")
    message = str(exc.value)
    assert "no longer serves mbedtls 3.6.0-0.1 (trixie)" in message and "\n" not in message
    assert not (private_cache / "debsrc" / "trees").exists() or not any((private_cache / "debsrc" / "trees").iterdir())


def test_a_dsc_that_is_not_the_pinned_one_is_refused(private_cache):
    pin = debsrc.PINS["mbedtls"]
    downloads = private_cache / "debsrc" / "downloads"
    downloads.mkdir(parents=True)
    (downloads / pin.dsc).write_text("Format: 3.0 (quilt)\nSource: mbedtls\n")  # not what was pinned
    with pytest.raises(debsrc.SourceError, match=f"{pin.dsc}: SHA-256 [0-9a-f]{{64}} is not the pinned"):
        debsrc.source_tree("mbedtls")
    assert not (private_cache / "debsrc" / "trees").exists()
