import os

import pytest

from segway_sign.errors import PinError
from segway_sign.hsm.pin import PinSource


def test_pin_file_strips_one_newline(tmp_path):
    f = tmp_path / "pin"
    f.write_text("12 34\n")
    f.chmod(0o600)
    assert PinSource(file=f).read("t") == "12 34"


def test_pin_env_names_a_variable(monkeypatch):
    monkeypatch.setenv("MY_PIN", "9876")
    assert PinSource(env="MY_PIN").read("t") == "9876"


@pytest.mark.parametrize("setup, message", [
    (lambda p, m: PinSource(file=p / "missing"), "does not exist"),
    (lambda p, m: (p.joinpath("empty").write_text(""), PinSource(file=p / "empty"))[1], "empty"),
    (lambda p, m: PinSource(env="SEGWAY_TEST_UNSET_PIN"), "not set"),
    (lambda p, m: PinSource(file=p, env=None), "directory"),
    (lambda p, m: PinSource(file=p / "x", env="Y"), "not both"),
])
def test_pin_source_errors(tmp_path, monkeypatch, setup, message):
    monkeypatch.delenv("SEGWAY_TEST_UNSET_PIN", raising=False)
    with pytest.raises(PinError, match=message):
        setup(tmp_path, monkeypatch).read("t")


def test_no_source_without_a_terminal_is_an_error(monkeypatch):
    monkeypatch.setattr("sys.stdin", open(os.devnull))
    with pytest.raises(PinError, match="needs a PIN"):
        PinSource().read("tok")


def test_world_readable_pin_file_warns(tmp_path, capsys):
    f = tmp_path / "pin"
    f.write_text("1111")
    f.chmod(0o644)
    PinSource(file=f).read("t")
    assert "readable by others" in capsys.readouterr().err
