"""The ``segway-sign`` command: a thin shell over the library.

Every ``SegwayError`` becomes ``segway-sign: error: <message>`` and its exit code; no tracebacks.
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import sys

import click

from .. import __version__
from ..errors import SegwayError

# Subcommand groups, each in its own module exporting ``group`` (or ``command``), with the first
# paragraph of its help, which ``segway-sign --help`` lists (tests/signing/cli/test_main.py checks
# they agree). A group whose module is absent (an optional format) is simply not offered.
_GROUPS = {
    "token": "Inspect PKCS#11 tokens; create the development HSM.",
    "pki": "Key ceremonies: keys in the token, certificates, public exports.",
    "fit": "U-Boot FIT images (verified boot).",
    "stm32": "STM32MP FSBL (TF-A BL2) image headers: v1 (STM32MP15), v2.0/v2.2 (STM32MP13/MP2).",
    "fip": "TF-A FIP with TRUSTED_BOARD_BOOT: TBBR certificates (STM32MP1's chain or TF-A's generic one).",
    "hab": "NXP HABv4 secure boot (i.MX 6, 7, 8M): SRK fuses, certificates, signed u-boot.imx / flash.bin.",
    "ahab": "NXP AHAB secure boot (i.MX 8QXP/8QM/8DXL/8ULP, i.MX 93): SRK hash, signed containers.",
    "verity": "dm-verity: hash a rootfs image and sign its root hash (CONFIG_DM_VERITY_VERIFY_ROOTHASH_SIG).",
    "ta": "OP-TEE Trusted Applications: the signed header OP-TEE checks against TA_PUBLIC_KEY.",
    "release": "Sign a build's deploy dir as the plan says, into a new release directory.",
    "flash": "Flash a signed release to a board: verify it, prepare the signed disk image (bmaptool) and "
             "the flash layout (STM32CubeProgrammer, uuu), then write it.",
}


class LazyGroup(click.Group):
    """A group whose subcommands are imported when one is run, not when the program starts (click's
    lazy-loading pattern): ``segway-sign fit sign`` imports the FIT code only, and ``--version`` or
    ``--help`` none of the formats. Each format pulls in its own parsers and crypto, so importing
    all of them at start-up cost most of a short command's time."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(name for name in _GROUPS if importlib.util.find_spec(f"{__package__}.{name}") is not None)

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if name not in _GROUPS:
            return None
        try:
            mod = importlib.import_module(f".{name}", __package__)
        except ModuleNotFoundError as err:
            if err.name != f"{__package__}.{name}":
                raise
            return None
        return getattr(mod, "group", None) or getattr(mod, "command")

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        """Click's listing, with each summary from ``_GROUPS`` instead of an imported command."""
        names = self.list_commands(ctx)
        if not names:
            return
        limit = formatter.width - 6 - max(map(len, names))
        rows = []
        for name in names:
            rows.append((name, click.Command(name, help=_GROUPS[name]).get_short_help_str(limit)))
        with formatter.section("Commands"):
            formatter.write_dl(rows)


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="segway-sign")
def cli() -> None:
    """Sign boot artifacts with keys that never leave a PKCS#11 token."""


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
