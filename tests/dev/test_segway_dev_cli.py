"""The ``python -m segway_dev`` command line: thin shell over the harness."""

from __future__ import annotations

import pytest

from segway_dev import fit_attacks
from segway_dev.__main__ import main


def test_attacks_writes_every_variant(tiny_fits, tmp_path, capsys):
    assert main(["attacks", str(tiny_fits["arm"]), str(tmp_path / "out")]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == len(fit_attacks.ATTACKS)
    for attack in fit_attacks.ATTACKS:
        assert (tmp_path / "out" / f"{attack.name}.itb").read_bytes() != tiny_fits["arm"].read_bytes()


def test_bad_input_is_a_one_line_error(tmp_path, capsys):
    bogus = tmp_path / "bogus.itb"
    bogus.write_bytes(b"not a FIT")
    assert main(["attacks", str(bogus), str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("segway_dev: error:") and "\n" not in err


@pytest.mark.qemu
def test_check_exit_status(control_dtbs, tiny_fits, tmp_path, capsys):
    assert main(["check", "arm", str(control_dtbs["arm"]), str(tiny_fits["arm"])]) == 0
    assert "arm: accepted" in capsys.readouterr().out
    bad = tmp_path / "bad.itb"
    bad.write_bytes(fit_attacks.flip_signature_value(tiny_fits["arm"].read_bytes()))
    assert main(["check", "arm", str(control_dtbs["arm"]), str(bad)]) == 1
    assert "arm: refused" in capsys.readouterr().out
