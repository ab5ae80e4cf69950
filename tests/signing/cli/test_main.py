"""The top-level command: subcommands are imported only when one runs (cli/main.py's LazyGroup),
and ``segway-sign --help`` lists them as their own help says, without importing any."""

from __future__ import annotations

import subprocess
import sys

import click
import pytest

from tests.helpers import ok, run_cli
from segway_sign.cli import main

NAMES = sorted(main._GROUPS)


def test_every_group_is_offered_and_loads():
    ctx = click.Context(main.cli)
    assert main.cli.list_commands(ctx) == NAMES
    for name in NAMES:
        assert isinstance(main.cli.get_command(ctx, name), click.Command), name
    assert main.cli.get_command(ctx, "nosuch") is None


@pytest.mark.parametrize("name", NAMES)
def test_listed_summary_is_the_commands_own(name):
    """The summary --help lists is the first paragraph of the command's help, so click shortens both
    alike at any width."""
    cmd = main.cli.get_command(click.Context(main.cli), name)
    assert main._GROUPS[name].split() == [w for w in cmd.help.partition("\n\n")[0].split() if w != "\b"]
    for limit in range(20, 140, 7):
        assert click.Command(name, help=main._GROUPS[name]).get_short_help_str(limit) == \
            cmd.get_short_help_str(limit)


def test_help_lists_every_command():
    out = ok(run_cli(["--help"]))
    listed = [line.split()[0] for line in out.split("Commands:\n", 1)[1].splitlines() if line.strip()]
    assert listed == NAMES


def imported_after(argv: list[str]) -> set[str]:
    """The segway_sign modules a command line imports (run in a fresh interpreter)."""
    code = ("import sys\nfrom segway_sign.cli.main import main\nsys.argv = ['segway-sign', *sys.argv[1:]]\n"
            "try:\n    main()\nexcept SystemExit:\n    pass\n"
            "print(' '.join(m for m in sys.modules if m.startswith('segway_sign')))")
    res = subprocess.run([sys.executable, "-c", code, *argv], capture_output=True, text=True, timeout=120)
    return set(res.stdout.split("\n")[-2].split())


@pytest.mark.parametrize("argv", [["--version"], ["--help"]])
def test_version_and_help_import_no_subcommand(argv):
    assert not {m for m in imported_after(argv) if m.startswith(("segway_sign.cli.", "segway_sign.formats",
                                                                  "segway_sign.hsm", "segway_sign.release"))
                } - {"segway_sign.cli.main"}


def test_a_subcommand_imports_its_own_group_only():
    loaded = imported_after(["fit", "sign", "--help"])
    assert "segway_sign.cli.fit" in loaded
    assert not {f"segway_sign.cli.{n}" for n in NAMES if n != "fit"} & loaded
