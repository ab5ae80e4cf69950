"""Every command that takes --json reports a failure as a JSON object on stdout too: {"error": the
one-line message, "exit_code": the exit status}; the one line stays on stderr."""

from __future__ import annotations

import json

import click
import pytest

from tests.helpers import one_line_error, run_cli
from segway_sign.cli.main import cli


def _json_commands(group: click.Group, path: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    found = []
    ctx = click.Context(group)
    # list_commands/get_command, not group.commands: the top-level group loads its commands lazily.
    for name in group.list_commands(ctx):
        cmd = group.get_command(ctx, name)
        if isinstance(cmd, click.Group):
            found += _json_commands(cmd, path + (name,))
        if any("--json" in p.opts for p in cmd.params):
            found.append(path + (name,))
    return found


JSON_COMMANDS = _json_commands(cli)


def _error_object(res, code: int) -> dict:
    assert res.returncode == code, res.stderr.decode()
    assert "Traceback" not in res.stderr.decode()
    error = json.loads(res.stdout)
    assert error == {"error": error["error"], "exit_code": code}
    assert error["error"] and "\n" not in error["error"]
    return error


def test_every_json_command_is_covered():
    assert {" ".join(c) for c in JSON_COMMANDS} >= {
        "token info", "token init-dev", "pki init", "fit sign", "stm32 sign", "fip sign", "hab sign", "hab srk",
        "ahab sign", "verity sign", "release", "release verify"}


@pytest.mark.parametrize("command", JSON_COMMANDS, ids=" ".join)
def test_usage_error_as_json(command):
    res = run_cli([*command, "--json", "--no-such-option"])
    error = _error_object(res, 2)
    assert "--no-such-option" in error["error"]


@pytest.mark.parametrize("args,words", [
    (["token", "info", "--module", "/nonexistent/lib.so"], "PKCS#11 module /nonexistent/lib.so does not exist"),
    (["fit", "sign", "--key", "pkcs11:token=x;object=y", "--in", "/nonexistent.itb", "--out", "o.itb"],
     "/nonexistent.itb does not exist"),
    (["release", "verify", "--certs", "/nonexistent", "/nonexistent-release"], "nonexistent"),
])
def test_failure_as_json(args, words, tmp_path):
    res = run_cli(args + ["--json"])
    error = _error_object(res, res.returncode)
    assert res.returncode != 0 and words in error["error"]
    err = one_line_error(res, res.returncode)
    assert error["error"] in err or err.startswith("Usage:")


def test_without_json_stdout_stays_empty():
    res = run_cli(["token", "info", "--module", "/nonexistent/lib.so"])
    one_line_error(res, 1, "does not exist")
    assert res.stdout == b""
