"""The ``segway-sign`` command: a thin shell over the library.

Every ``SegwayError`` becomes ``segway-sign: error: <message>`` and its exit code; no tracebacks.
"""

from __future__ import annotations

import importlib
import json
import sys

import click

from .. import __version__
from ..errors import SegwayError

# Subcommand groups, each in its own module exporting ``group``. A group whose module is absent
# (an optional format) is simply not offered.
_GROUPS = ("token", "pki", "fit", "stm32", "fip", "hab", "ahab", "verity", "ta", "release", "flash")


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="segway-sign")
def cli() -> None:
    """Sign boot artifacts with keys that never leave a PKCS#11 token."""


for _name in _GROUPS:
    try:
        _mod = importlib.import_module(f".{_name}", __package__)
    except ModuleNotFoundError as _err:
        if _err.name != f"{__package__}.{_name}":
            raise
        continue
    _cmd = getattr(_mod, "group", None) or getattr(_mod, "command")
    cli.add_command(_cmd, _name)


def one_line(message: object) -> str:
    """A message on one line: a library's multi-line text joined, control characters escaped
    (a name taken from a malformed input may hold any byte)."""
    text = " ".join(line.strip() for line in str(message).splitlines() if line.strip())
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


def json_requested(argv: list[str]) -> bool:
    """Whether the command line asks for JSON (``--json`` before any ``--``)."""
    return "--json" in (argv[:argv.index("--")] if "--" in argv else argv)


_as_json = False


def _json_error(message: object, code: int) -> None:
    """With --json, a failure is also a JSON object on stdout (the one line stays on stderr)."""
    if _as_json:
        click.echo(json.dumps({"error": one_line(message), "exit_code": code}, indent=2, sort_keys=True))


def _fail(message: object, code: int) -> None:
    _json_error(message, code)
    click.echo(f"segway-sign: error: {one_line(message)}", err=True)
    sys.exit(code)


def main() -> None:
    global _as_json
    _as_json = json_requested(sys.argv[1:])
    try:
        cli.main(standalone_mode=False)
    except click.exceptions.Abort:
        _fail("aborted", 1)
    except click.ClickException as err:
        _json_error(err.format_message(), err.exit_code)
        err.show()
        sys.exit(err.exit_code)
    except SegwayError as err:
        _fail(err, err.exit_code)
    except KeyboardInterrupt:
        _fail("interrupted", 130)
    except RecursionError:  # a nesting no parser should have followed
        _fail("input nested too deeply", 1)
    except MemoryError:
        _fail("out of memory (input too large?)", 1)
    except OSError as err:  # e.g. an unreadable input named on the command line
        where = f"{err.filename}: " if getattr(err, "filename", None) else ""
        _fail(f"{where}{err.strerror or err}", 1)
