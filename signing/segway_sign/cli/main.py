"""The ``segway-sign`` command: a thin shell over the library.

Every ``SegwayError`` becomes ``segway-sign: error: <message>`` and its exit code; no tracebacks.
"""

from __future__ import annotations

import importlib
import sys

import click

from .. import __version__
from ..errors import SegwayError

# Subcommand groups, each in its own module exporting ``group``. A group whose module is absent
# (an optional format) is simply not offered.
_GROUPS = ("token", "pki", "fit", "stm32", "fip", "hab", "ahab", "verity", "release")


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


def main() -> None:
    try:
        cli.main(standalone_mode=False)
    except click.exceptions.Abort:
        click.echo("segway-sign: error: aborted", err=True)
        sys.exit(1)
    except click.ClickException as err:
        err.show()
        sys.exit(err.exit_code)
    except SegwayError as err:
        click.echo(f"segway-sign: error: {err}", err=True)
        sys.exit(err.exit_code)
    except KeyboardInterrupt:
        click.echo("segway-sign: error: interrupted", err=True)
        sys.exit(130)
    except OSError as err:  # e.g. an unreadable input named on the command line
        where = f" {err.filename}" if getattr(err, "filename", None) else ""
        click.echo(f"segway-sign: error:{where}: {err.strerror or err}", err=True)
        sys.exit(1)
