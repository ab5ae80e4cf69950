"""segway-kmsd: run the key management service until SIGTERM/SIGINT."""
from __future__ import annotations

import logging
import signal
import sqlite3
import sys
import threading

import click

from segway_kms import config as config_mod
from segway_kms.errors import KmsError
from segway_kms.server import notify


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("-c", "--config", "config_path", default="/etc/segway-kms/segway-kms.yaml", show_default=True,
              type=click.Path(dir_okay=False), help="Configuration file.")
@click.option("-v", "--verbose", is_flag=True, help="Log debug messages.")
def main(config_path: str, verbose: bool) -> None:
    """Serve the segway key management service (gRPC over Unix sockets and mTLS)."""
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO,
                        format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    from segway_kms.server.app import KmsApp

    try:
        cfg = config_mod.load(config_path)
        app = KmsApp(cfg)
        app.start()
    except KmsError as exc:
        click.echo(f"segway-kmsd: {exc}", err=True)
        sys.exit(2)
    except (OSError, sqlite3.Error) as exc:
        click.echo(f"segway-kmsd: cannot start: {exc}", err=True)
        sys.exit(2)
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    notify.notify("READY=1\nSTATUS=serving")
    logging.getLogger("segway_kms").info("segway-kmsd ready (backend %s, profile %s)", app.backend.name, cfg.profile)
    while not stop.wait(1.0):
        pass
    notify.notify("STOPPING=1")
    app.stop()
    logging.getLogger("segway_kms").info("segway-kmsd stopped")


if __name__ == "__main__":
    main()
