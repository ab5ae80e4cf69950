"""FIT attack functions: each output is still an FDT and differs exactly where intended (no QEMU)."""

from __future__ import annotations

import hashlib
import struct
import subprocess

import libfdt
import pytest

from segway_dev import fit_attacks


@pytest.fixture(scope="module")
def signed(tiny_fits) -> bytes:
    return tiny_fits["arm"].read_bytes()


def _fdt(blob: bytes) -> libfdt.Fdt:
    return libfdt.Fdt(bytearray(blob))


def _prop(fdt: libfdt.Fdt, path: str, name: str) -> bytes:
    return bytes(fdt.getprop(fdt.path_offset(path), name))


def _children(fdt: libfdt.Fdt, path: str) -> list[str]:
    names, sub = [], fdt.first_subnode(fdt.path_offset(path), [libfdt.NOTFOUND])
    while sub >= 0:
        names.append(fdt.get_name(sub))
        sub = fdt.next_subnode(sub, [libfdt.NOTFOUND])
    return names


SIG = "/configurations/conf-1/signature-1"


@pytest.mark.parametrize("attack", fit_attacks.ATTACKS, ids=lambda a: a.name)
def test_every_attack_changes_the_blob_and_keeps_an_fdt_header(signed, attack):
    out = attack.apply(signed)
    assert out != signed
    assert struct.unpack(">I", out[:4])[0] == 0xD00DFEED
    assert attack.conf in ("conf-1", "conf-2")
    assert attack.description


def test_flip_kernel_data_changes_one_byte_of_data_only(signed):
    before, after = _fdt(signed), _fdt(fit_attacks.flip_kernel_data(signed))
    a, b = _prop(before, "/images/kernel-1", "data"), _prop(after, "/images/kernel-1", "data")
    assert len(a) == len(b) and sum(x != y for x, y in zip(a, b)) == 1
    assert _prop(before, "/images/kernel-1/hash-1", "value") == _prop(after, "/images/kernel-1/hash-1", "value")
    assert _prop(before, SIG, "value") == _prop(after, SIG, "value")


def test_config_property_attacks(signed):
    added = _fdt(fit_attacks.add_config_property(signed))
    assert _prop(added, "/configurations/conf-1", "segway-injected") == b"evil\0"
    modified = _fdt(fit_attacks.modify_config_property(signed))
    old = _prop(_fdt(signed), "/configurations/conf-1", "description")
    new = _prop(modified, "/configurations/conf-1", "description")
    assert len(old) == len(new) and old != new


def test_flip_signature_value_increments_first_byte(signed):
    old = _prop(_fdt(signed), SIG, "value")
    new = _prop(_fdt(fit_attacks.flip_signature_value(signed)), SIG, "value")
    assert len(new) == 256 and new[0] == (old[0] + 1) & 0xFF and new[1:] == old[1:]


def test_clone_images_redirects_hashed_nodes(signed):
    fdt = _fdt(fit_attacks.clone_images(signed))
    assert _children(fdt, "/images/images") == ["kernel-1", "fdt-1", "ramdisk-1"]
    nodes = _prop(fdt, SIG, "hashed-nodes").rstrip(b"\0").split(b"\0")
    image_nodes = [n for n in nodes if n.startswith(b"/images")]
    assert image_nodes and all(n.startswith(b"/images/images/") for n in image_nodes)
    orig = _fdt(signed)
    assert _prop(fdt, "/images/images/kernel-1", "data") == _prop(orig, "/images/kernel-1", "data")
    data = _prop(fdt, "/images/kernel-1", "data")
    assert data != _prop(orig, "/images/kernel-1", "data")
    assert _prop(fdt, "/images/kernel-1/hash-1", "value") == hashlib.sha256(data).digest()


def test_kernel_unit_address_shadows_the_kernel(signed):
    fdt = _fdt(fit_attacks.kernel_unit_address(signed))
    assert _children(fdt, "/images")[:2] == ["kernel-1@evil", "kernel-1"]
    evil = fdt.path_offset("/images/kernel-1")  # libfdt ignores the unit address: finds the copy
    assert fdt.get_name(evil) == "kernel-1@evil"
    data = _prop(fdt, "/images/kernel-1@evil", "data")
    assert data == fit_attacks.EVIL_PAYLOAD
    assert _prop(fdt, "/images/kernel-1@evil/hash-1", "value") == hashlib.sha256(data).digest()


def test_forge_second_config(signed):
    fdt = _fdt(fit_attacks.forge_second_config(signed))
    assert _prop(fdt, "/configurations", "default") == b"conf-2\0"
    assert _prop(fdt, "/configurations/conf-2", "kernel") == b"kernel-2\0"
    assert _children(fdt, "/images/kernel-2") == []
    assert _prop(fdt, "/configurations/conf-2/signature-1", "value") == _prop(fdt, SIG, "value")


def test_fake_root_adds_a_second_top_level_node(signed, tmp_path):
    out = tmp_path / "fakeroot.itb"
    out.write_bytes(fit_attacks.fake_root(signed))
    dump = subprocess.run(["fdtdump", str(out)], capture_output=True, text=True).stdout
    tops = [line for line in dump.splitlines() if line.endswith(" {") and not line.startswith(" ")]
    assert tops == ["f@keroot {", "/ {"]
    assert 'kernel = "evil_kernel";' in dump and "evil_kernel {" in dump


@pytest.mark.parametrize("attack, cells", [
    (fit_attacks.hashed_strings_zero, lambda n: (0,)),
    (fit_attacks.hashed_strings_oversize, lambda n: (0, n + 1)),
    (fit_attacks.hashed_strings_whole_table, lambda n: (0, n)),
])
def test_hashed_strings_attacks(signed, attack, cells):
    fdt = _fdt(attack(signed))
    value = _prop(fdt, SIG, "hashed-strings")
    assert struct.unpack(f">{len(value) // 4}I", value) == cells(_fdt(signed).size_dt_strings())


def test_oversized_totalsize(signed):
    out = fit_attacks.oversized_totalsize(signed)
    assert struct.unpack(">I", out[4:8])[0] == fit_attacks.OVERSIZED_TOTALSIZE
    assert out[8:] == signed[8:]


def test_unsigned_copy_removes_signature_values(signed, tmp_path):
    out = tmp_path / "unsigned.itb"
    out.write_bytes(fit_attacks.unsigned_copy(signed))
    listing = subprocess.run(["mkimage", "-l", str(out)], capture_output=True, text=True, check=True).stdout
    assert "Sign value:   unavailable" in listing
    with pytest.raises(fit_attacks.FitAttackError, match="no signature value"):
        fit_attacks.unsigned_copy(out.read_bytes())


def test_rejects_non_fdt_input():
    with pytest.raises(fit_attacks.FitAttackError):
        fit_attacks.flip_signature_value(b"not a device tree at all" * 4)
