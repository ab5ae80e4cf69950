"""``segway-sign token``: what a module offers, and the development HSM."""

from __future__ import annotations

from pathlib import Path

import click

from ..hsm import devhsm
from ..hsm.inventory import describe_module
from .common import emit, token_options


@click.group()
def group() -> None:
    """Inspect PKCS#11 tokens; create the development HSM."""


@group.command("info")
@token_options
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def info(token, as_json: bool) -> None:
    """List tokens, their mechanisms and keys (private keys too when a PIN is given)."""
    report = describe_module(token.module, token.pin)
    lines = [f"module: {report['module']} ({report['transport']})"]
    for tok in report["tokens"]:
        lines.append(f"token '{tok['label']}' serial {tok['serial']} ({tok['manufacturer']} {tok['model']})")
        lines.append(f"  uri: {tok['uri']}")
        lines.append(f"  mechanisms ({len(tok['mechanisms'])}): {' '.join(tok['mechanisms'])}")
        if not tok["logged_in"]:
            lines.append("  (no PIN given: private keys are not listed)")
        for obj in tok["objects"]:
            extra = f" {obj['key_type']}" if obj.get("key_type") else ""
            lines.append(f"  {obj['class']}{extra} '{obj['label']}' id {obj['id']}")
            lines.append(f"    {obj['uri']}")
    emit(report, as_json, "\n".join(lines))


@group.command("init-dev")
@click.option("--dir", "root", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Directory of the development HSM (default: $SEGWAY_DEV_HSM_DIR or .segway/hsm).")
@click.option("--label", default=devhsm.DEFAULT_LABEL, show_default=True, help="Token label.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def init_dev(root: Path | None, label: str, as_json: bool) -> None:
    """Create the development SoftHSM token (idempotent). Its PIN goes to <dir>/user.pin (mode 0600)."""
    root = (root or devhsm.directory()).absolute()
    created = devhsm.create(root, label)
    result = {"dir": str(root), "token": label, **{k: str(v) for k, v in created.items()}}
    emit(result, as_json,
         f"development HSM in {root}: token '{label}', PIN file {created['pin_file']}\n"
         f"use it with: export SOFTHSM2_CONF={created['conf']} SEGWAY_PIN_FILE={created['pin_file']}")
