import ctypes
import os
import subprocess
from pathlib import Path

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


def test_pin_file_may_be_a_pipe_read_once(tmp_path):
    """``--pin-file <(...)``: a pipe is read once; every token of the run gets the same PIN."""
    r, w = os.pipe()
    os.write(w, b"4321\n")
    os.close(w)
    try:
        source = PinSource(file=Path(f"/proc/self/fd/{r}"))
        assert source.read("a") == "4321"
        assert source.read("b") == "4321"  # the pipe is drained; the PIN read first is reused
    finally:
        os.close(r)


@pytest.mark.parametrize("content, message", [
    (b"\xff\xfe12", "not UTF-8"),
    (b"1" * 4097, "longer than 4096 bytes"),
    (b"12\x0034", "NUL"),
])
def test_pin_file_content_errors(tmp_path, content, message):
    f = tmp_path / "pin"
    f.write_bytes(content)
    f.chmod(0o600)
    with pytest.raises(PinError, match=message):
        PinSource(file=f).read("t")


def test_pin_of_the_size_limit_is_accepted(tmp_path):
    f = tmp_path / "pin"
    f.write_bytes(b"7" * 4095 + b"\n")
    f.chmod(0o600)
    assert PinSource(file=f).read("t") == "7" * 4095


def test_endless_pipe_is_cut_at_the_size_limit():
    """A writer that never stops (``--pin-file <(yes)``) is refused after 4 KiB, not read forever."""
    yes = subprocess.Popen(["yes"], stdout=subprocess.PIPE)
    try:
        with pytest.raises(PinError, match="longer than 4096 bytes"):
            PinSource(file=Path(f"/proc/self/fd/{yes.stdout.fileno()}")).read("t")
    finally:
        yes.kill()
        yes.wait()
        yes.stdout.close()


def test_device_is_not_a_pin_file():
    with pytest.raises(PinError, match="neither a file nor a pipe"):
        PinSource(file=Path("/dev/zero")).read("t")


def test_pin_env_is_removed_before_children_start(monkeypatch):
    """After the read the variable is gone from os.environ and from the C environment, so a child
    process started afterwards (without an explicit env) does not inherit it."""
    monkeypatch.setenv("SEGWAY_TEST_PIN_ENV", "5555")
    source = PinSource(env="SEGWAY_TEST_PIN_ENV")
    assert source.read("t") == "5555"
    assert "SEGWAY_TEST_PIN_ENV" not in os.environ
    getenv = ctypes.CDLL(None).getenv
    getenv.restype = ctypes.c_char_p
    assert getenv(b"SEGWAY_TEST_PIN_ENV") is None and getenv(b"PATH")
    child = subprocess.run(["sh", "-c", 'echo "${SEGWAY_TEST_PIN_ENV-unset}"'], capture_output=True, text=True,
                           check=True)
    assert child.stdout.strip() == "unset"
    # Another token of the same run still gets the PIN.
    assert source.read("u") == "5555"
