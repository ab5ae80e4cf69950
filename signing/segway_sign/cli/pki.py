"""``segway-sign pki``: the key ceremony."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from ..errors import OutputExistsError, UsageError
from ..pki.ceremony import Ceremony, run_ceremony
from ..pki.plan import load_plan
from .common import emit, read_input, token_options

_OUT = click.option("--out", "out_dir", type=click.Path(path_type=Path), default=Path("out/pki"),
                    show_default=True, help="Directory for certificates, public keys, U-Boot key nodes, key "
                    "tables, fuse values and the record.")
_CERTS = click.option("--certs-dir", type=click.Path(file_okay=False, path_type=Path), default=None,
                      help="Also write the signing certificates (<label>.crt) and key tables there: the "
                      "directory the signing plans and the Yocto layer read (conf/signing/certs).")


def _summary(verb: str, plan, record: dict, out_dir: Path) -> str:
    lines = [f"ceremony '{plan.name}' {verb}: {len(record['keys'])} keys; public material in {out_dir}"]
    if record.get("certs_dir"):
        lines.append(f"certificates and key tables in {record['certs_dir']}: {', '.join(record['certs_dir_files'])}")
    lines += [f"  {k['purpose']:8} {k['label']:24} {k['type']:7} {k['uri']}" for k in record["keys"]]
    for table in ("hab_srk", "ahab_srk"):
        if table in record and not record[table]["complete"]:
            lines.append(f"  {table}: {record[table]['note']}")
    return "\n".join(lines)


def _load(plan_path: Path):
    return load_plan(plan_path, read_input(plan_path, "plan"))


@click.group()
def group() -> None:
    """Key ceremonies: keys in the token, certificates, public exports."""


@group.command("init")
@click.argument("plan_path", metavar="PLAN.yaml", type=click.Path(path_type=Path))
@_OUT
@_CERTS
@click.option("--resume", is_flag=True, help="Keep the plan's keys that exist in the token, create the others "
              "(finishes a ceremony that stopped).")
@click.option("--replace-keys", is_flag=True, help="Destroy and recreate keys that already exist in the token.")
@click.option("--yes", is_flag=True, help="Do not ask before destroying keys (--replace-keys).")
@click.option("--force", is_flag=True, help="Replace an existing output directory.")
@click.option("--json", "as_json", is_flag=True, help="Print the ceremony record as JSON.")
@token_options
def init(plan_path, out_dir, certs_dir, resume, replace_keys, yes, force, as_json, token):
    """Create the keys a plan names inside the token and issue their certificates.

    The whole plan is checked before any key is created; existing keys are never touched unless
    --replace-keys (destroys them, after confirmation or --yes) or --resume (keeps them) is given.
    """
    plan = _load(plan_path)
    if resume and replace_keys:
        raise UsageError("--resume keeps existing keys, --replace-keys destroys them: give one")
    if out_dir.exists() and not force:
        raise OutputExistsError(f"output {out_dir} exists (use --force to replace it)")
    if replace_keys:
        have = [label for label, ok in Ceremony(plan, token.open_session).existing().items() if ok]
        if have and not yes:
            question = (f"--replace-keys destroys {len(have)} key(s) of this plan in the token "
                        f"({', '.join(have)}); signatures made with them can no longer be renewed")
            if not sys.stdin.isatty():
                raise UsageError(f"{question}: confirm on a terminal or add --yes")
            click.confirm(question + ". Destroy them?", abort=True, err=True)
    log = (lambda _msg: None) if as_json else (lambda msg: click.echo(msg, err=True))
    mode = "replace" if replace_keys else "resume" if resume else "init"
    record = run_ceremony(plan, out_dir, token.open_session, force=force, log=log, certs_dir=certs_dir,
                          mode=mode, plan_path=str(plan_path))
    emit(record, as_json, _summary("done", plan, record, out_dir))


@group.command("export")
@click.argument("plan_path", metavar="PLAN.yaml", type=click.Path(path_type=Path))
@_OUT
@_CERTS
@click.option("--force", is_flag=True, help="Replace an existing output directory.")
@click.option("--json", "as_json", is_flag=True, help="Print the ceremony record as JSON.")
@token_options
def export(plan_path, out_dir, certs_dir, force, as_json, token):
    """Write the public material of a plan's existing keys: certificates, public keys, key tables, fuse
    values. Creates no key (a key whose certificate is missing is certified by its issuer)."""
    plan = _load(plan_path)
    log = (lambda _msg: None) if as_json else (lambda msg: click.echo(msg, err=True))
    record = run_ceremony(plan, out_dir, token.open_session, force=force, log=log, certs_dir=certs_dir,
                          mode="export", plan_path=str(plan_path))
    emit(record, as_json, _summary("exported", plan, record, out_dir))


@group.command("show")
@click.argument("plan_path", metavar="PLAN.yaml", type=click.Path(path_type=Path))
@click.option("--plan-only", is_flag=True, help="Only what the plan would create; do not open the token.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@token_options
def show(plan_path, plan_only, as_json, token):
    """What a plan creates, and which of its keys exist in the token."""
    plan = _load(plan_path)
    if plan_only:
        result = {"plan": plan.name, "plan_sha256": plan.sha256, "keys": [
            {"label": s.label, "purpose": s.purpose or "root-ca", "type": s.kind,
             "token": str(plan.token_for(s)),
             "issuer": s.issuer or (None if s is plan.root else plan.root.label)} for s in plan.specs]}
    else:
        login = token.pin.file is not None or token.pin.env is not None
        result = Ceremony(plan, lambda uri: token.open_session(uri, login=login)).show()
    lines = [f"plan '{plan.name}': {len(result['keys'])} keys"
             + ("" if plan_only else f", {result['existing']} in the token, {result['missing']} missing")]
    for k in result["keys"]:
        state = "" if plan_only else ("  exists" if k["exists"] else "  missing")
        issuer = f" (issued by {k['issuer']})" if k["issuer"] else ""
        lines.append(f"  {k['purpose']:9} {k['label']:26} {k['type']:8} token {k['token']}{issuer}{state}")
    emit(result, as_json, "\n".join(lines))
