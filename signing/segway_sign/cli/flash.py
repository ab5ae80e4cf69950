"""``segway-sign flash BOARD``: verify a release, prepare its signed disk and flash layout, write it.

One subcommand per board of :data:`segway_sign.flash.BOARDS`. ``scripts/flash-stm32mp1`` and
``scripts/flash-imx`` run the same command as ``python -m segway_sign.cli.flash BOARD``, under their
own name (``flash-<board>: error: …``).
"""

from __future__ import annotations

import shlex
import sys
import tempfile
from pathlib import Path

import click

from ..atomic import output_dir
from ..errors import SegwayError, UsageError
from ..flash import BOARDS, Board, Release, disk_name, prepare
from ..flash.tools import Tool, bmaptool


def _run_or_print(tool: Tool, cmd: list[str], dry_run: bool, cwd: Path) -> None:
    line = f"(cd {shlex.quote(str(cwd))} && " + " ".join(shlex.quote(c) for c in cmd) + ")"
    if dry_run:
        click.echo(f"would run: {line}")
        return
    click.echo(f"running: {line}", err=True)
    tool.run_attached(cmd, cwd)


def board_command(board: Board) -> click.Command:
    targets = list(board.targets)

    @click.command(name=board.name, help=f"{board.title}.\n\nVerify RELEASE_DIR against --certs, prepare "
                   "<release>-flash/ and write it to --device (bmaptool) or over --usb.",
                   context_settings={"help_option_names": ["-h", "--help"]})
    @click.option("--certs", required=True, type=click.Path(file_okay=False, path_type=Path),
                  help="Trusted certificates; the release is verified against them first.")
    @click.option("--target", type=click.Choice(targets), default=targets[0], show_default=True)
    @click.option("--work-dir", type=click.Path(file_okay=False, path_type=Path),
                  help="Where the signed wic, its bmap and the layout/script go (default: <release>-flash).")
    @click.option("--device", metavar="DEV", help="Write the signed wic to this block device with bmaptool.")
    @click.option("--usb", "usb", is_flag=True,
                  help=f"Program over USB ({board.usb.name}) instead of a card reader.")
    @click.option("--dry-run", is_flag=True, help="Verify and print what would be prepared and run; write nothing.")
    @click.option("--allow-unsigned-boot", is_flag=True,
                  help="Accept an unsigned first-stage image (open development boards only).")
    @click.option("--force", is_flag=True, help="Replace an existing work dir.")
    @click.argument("release_dir", type=click.Path(file_okay=False, path_type=Path))
    def cmd(certs, target, work_dir, device, usb, dry_run, allow_unsigned_boot, force, release_dir):
        if bool(device) == usb:
            raise UsageError("give exactly one of --device DEV or --usb")
        release = Release.open(release_dir, certs)
        click.echo(f"{release_dir}: signatures and manifest verified ({release.manifest['machine']})")
        work = work_dir or release_dir.with_name(release_dir.name + "-flash")
        wic_name = disk_name(release, board)
        if usb:
            tool, run = board.usb, board.usb.program(board.layout.file_name(target))
        else:
            if not dry_run and not Path(device).is_block_device():
                raise UsageError(f"{device} is not a block device")
            tool, run = bmaptool, bmaptool.copy_command(f"{wic_name}.bmap", wic_name, device)
        if not dry_run:
            tool.require()
        if dry_run:
            with tempfile.TemporaryDirectory(prefix="flash-dry-") as tmp:
                prepared = prepare(release, board, Path(tmp), allow_unsigned_boot)
                click.echo(f"would prepare {work}/:")
                for line in prepared.placed:
                    click.echo(f"  {wic_name}: {line}")
                for path in prepared.files():
                    click.echo(f"  {path.name}")
                layout = prepared.layouts[target]
                click.echo(f"--- {layout.name} ---")
                click.echo(layout.read_text(), nl=False)
                click.echo("---")
                checked = board.usb.check(layout.name, Path(tmp))
                if checked:
                    click.echo(checked)
        else:
            with output_dir(work, force=force) as tmp:
                prepare(release, board, tmp, allow_unsigned_boot)
            # The prepared files now live in ``work``; the command names them there.
        _run_or_print(tool, run, dry_run, work)

    return cmd


@click.group(name="flash")
def group() -> None:
    """Flash a signed release to a board: verify it, prepare the signed disk image (bmaptool) and
    the flash layout (STM32CubeProgrammer, uuu), then write it.

    \b
    segway-sign flash stm32mp1 --certs DIR --device /dev/sdX RELEASE
    segway-sign flash imx --certs DIR --usb --target emmc --dry-run RELEASE
    """


for _board in BOARDS.values():
    group.add_command(board_command(_board))


def main(board: str, argv: list[str] | None = None) -> None:
    """The command of one board under the name of its script (``flash-<board>``)."""
    prog = BOARDS[board].script
    try:
        board_command(BOARDS[board]).main(argv, prog_name=prog, standalone_mode=False)
    except click.ClickException as err:
        err.show()
        sys.exit(err.exit_code)
    except SegwayError as err:
        click.echo(f"{prog}: error: {err}", err=True)
        sys.exit(err.exit_code)
    except OSError as err:
        click.echo(f"{prog}: error: {err.filename or ''}: {err.strerror or err}", err=True)
        sys.exit(1)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2:])
