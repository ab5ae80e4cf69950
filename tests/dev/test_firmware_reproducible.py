"""The secure-world firmware is reproducible: TF-A, OP-TEE and U-Boot built a second time from
scratch (a fresh source tree and build tree at another absolute path, the same keys) give the same
bytes in every image (firmware.check_reproducible; ``python -m segway_dev firmware-reproducible``).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from segway_dev import firmware

EXPECTED = [("tf-a", "bl1.bin"), ("tf-a", "bl2.bin"), ("tf-a", "bl31.bin"),
            ("optee-os", "tee-header_v2.bin"), ("optee-os", "tee-pager_v2.bin"),
            ("optee-os", "tee-pageable_v2.bin"), ("u-boot", "u-boot-nodtb.bin")]


def _recipe(name: str, content, builds: list[Path]) -> firmware._Recipe:
    """A firmware of two files: ``same.bin`` and ``image.bin`` = ``content(tree)``."""
    def build(out: Path, log: Path, tree: Path, sources: dict) -> None:
        builds.append(tree)
        log.write_text("built\n")
        (out / "same.bin").write_bytes(b"\0" * 5000)
        (out / "image.bin").write_bytes(content(tree))

    return firmware._Recipe(name, {"name": name}, (), build, ("same.bin", "image.bin"))


@pytest.fixture
def private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("SEGWAY_CACHE_DIR", str(tmp_path / "cache"))
    return tmp_path / "cache"


def test_a_build_that_embeds_its_path_is_caught_at_the_first_differing_byte(private_cache):
    builds: list[Path] = []
    recipe = _recipe("leaky", lambda tree: b"HEADER:" + str(tree).encode(), builds)
    results = firmware.check_reproducible(recipes=[recipe])
    assert len(builds) == 2 and builds[0] != builds[1]
    same, image = results
    assert same.identical and same.summary() == "leaky same.bin: identical (5000 bytes)"
    # Where the two build trees' paths part.
    assert image.first_difference == len(b"HEADER:") + len(os.path.commonprefix([str(b) for b in builds]))
    assert image.summary().startswith(f"leaky image.bin: differs from offset {image.first_difference:#x}")
    assert image.second.is_file()  # kept for a look
    # Nothing is recorded as proven: asking again builds again.
    firmware.check_reproducible(recipes=[recipe], reuse_proof=True)
    assert len(builds) == 3


def test_an_identical_build_is_recorded_by_its_inputs(private_cache):
    builds: list[Path] = []
    recipe = _recipe("steady", lambda tree: b"the same bytes", builds)
    assert all(c.identical for c in firmware.check_reproducible(recipes=[recipe]))
    assert not list((private_cache / "firmware-reproducible").glob("steady-second-*"))  # removed
    again = firmware.check_reproducible(recipes=[recipe], reuse_proof=True)
    assert len(builds) == 2 and [c.file for c in again] == ["same.bin", "image.bin"]
    firmware.check_reproducible(recipes=[recipe])  # without reuse_proof: built again
    assert len(builds) == 3


def test_first_difference():
    assert firmware.first_difference(b"abc", b"abc") is None
    assert firmware.first_difference(b"abc", b"abd") == 2
    assert firmware.first_difference(b"ab", b"abc") == 2
    big = bytes(10000)
    assert firmware.first_difference(big, big[:9000] + b"\1" + big[9001:]) == 9000


@pytest.mark.slow
def test_the_firmware_is_reproducible():
    """Minutes on a cold cache (three firmware builds); a proof recorded for the same inputs (pins,
    compiler, options, keys) stands in for the second builds."""
    results = firmware.check_reproducible(reuse_proof=True, progress=print)
    assert [(c.firmware, c.file) for c in results] == EXPECTED
    assert all(c.identical for c in results), "\n".join(c.summary() for c in results if not c.identical)
