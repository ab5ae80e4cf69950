"""``segway-sign pki``: the key ceremony."""

from __future__ import annotations

from pathlib import Path

import click

from ..pki.ceremony import run_ceremony
from ..pki.plan import load_plan
from .common import emit, read_input, token_options


@click.group()
def group() -> None:
    """Key ceremonies: keys in the token, certificates, public exports."""


@group.command("init")
@click.argument("plan_path", metavar="PLAN.yaml", type=click.Path(path_type=Path))
@click.option("--out", "out_dir", type=click.Path(path_type=Path), default=Path("out/pki"), show_default=True,
              help="Directory for certificates, public keys, U-Boot key nodes, fuse values and the record.")
@click.option("--replace-keys", is_flag=True, help="Destroy and recreate keys that already exist in the token.")
@click.option("--force", is_flag=True, help="Replace an existing output directory.")
@click.option("--json", "as_json", is_flag=True, help="Print the ceremony record as JSON.")
@token_options
def init(plan_path, out_dir, replace_keys, force, as_json, token):
    """Create the keys a plan names inside the token and issue their certificates."""
    plan = load_plan(plan_path, read_input(plan_path, "plan"))
    log = (lambda _msg: None) if as_json else (lambda msg: click.echo(msg, err=True))
    record = run_ceremony(plan, out_dir, token.open_session, replace_keys, force, log)
    emit(record, as_json, "\n".join(
        [f"ceremony '{plan.name}' done: {len(record['keys'])} keys; public material in {out_dir}"] +
        [f"  {k['purpose']:8} {k['label']:24} {k['type']:7} {k['uri']}" for k in record["keys"]]))
