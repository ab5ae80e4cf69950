"""``segway-sign release``: run a machine's signing plan; ``release verify`` checks a release offline."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from ..errors import UsageError
from ..release import steps
from ..release.certs import load_certs_dir
from ..release.plan import load_plan
from ..release.runner import run_release
from ..release.verify import verify_release
from .common import emit, output_options, token_options


def _progress_printer(enabled: bool):
    if not enabled:
        return None
    err = click.get_text_stream("stderr")
    state = {"label": None, "shown": -1}

    def show(label: str, done: int, total: int) -> None:
        pct = 100 * done // total if total else 100
        if label != state["label"]:
            if state["label"] is not None:
                err.write("\n")
            state.update(label=label, shown=-1)
        if pct != state["shown"]:
            state["shown"] = pct
            err.write(f"\r{label} {pct:3d}%")
            err.flush()
    return show


@click.group(invoke_without_command=True)
@click.option("--plan", "plan_path", type=click.Path(dir_okay=False, path_type=Path),
              help="Signing plan (conf/signing/<machine>.yaml).")
@click.option("--deploy-dir", type=click.Path(file_okay=False, path_type=Path),
              help="Build deploy directory (read only).")
@click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path),
              help="New release directory (signed artifacts, manifest.json, manifest.json.p7s).")
@click.option("--certs", "certs_dir", type=click.Path(file_okay=False, path_type=Path),
              help="Certificates the plan names (default: certs/ beside the plan).")
@click.option("--progress/--no-progress", default=None, help="Progress on stderr (default: on a terminal).")
@token_options
@output_options
@click.pass_context
def group(ctx, plan_path, deploy_dir, out_dir, certs_dir, progress, token, force, as_json):
    """Sign a build's deploy dir as the plan says, into a new release directory.

    \b
    segway-sign release --plan PLAN --deploy-dir DIR --out OUTDIR
    segway-sign release verify --certs DIR OUTDIR
    """
    if ctx.invoked_subcommand is not None:
        if plan_path or deploy_dir or out_dir:
            raise UsageError("--plan/--deploy-dir/--out belong to 'release', not 'release verify'")
        return
    missing = [o for o, v in (("--plan", plan_path), ("--deploy-dir", deploy_dir), ("--out", out_dir)) if v is None]
    if missing:
        raise UsageError(f"release needs {', '.join(missing)}")
    plan = load_plan(plan_path, set(steps.REGISTRY))
    if certs_dir is None:
        certs_dir = plan_path.resolve().parent / "certs"
    show = sys.stderr.isatty() if progress is None else progress
    res = run_release(plan, deploy_dir, out_dir, token.open_key, certs_dir, force=force,
                      progress=_progress_printer(show and not as_json))
    if show and not as_json:
        click.echo("", err=True)
    doc = res.manifest
    result = {"out": str(out_dir), "status": res.status, "machine": doc["machine"],
              "steps": [s["id"] for s in doc["steps"]], "outputs": len(doc["outputs"])}
    what = "already signed from this plan and these inputs; left as is" if res.status == "unchanged" else \
        f"signed {len(doc['steps'])} steps, {len(doc['outputs'])} files"
    emit(result, as_json, f"{out_dir}: {what}")


@group.command("verify")
@click.option("--certs", "certs_dir", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="Directory of trusted certificates (PEM or DER).")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@click.argument("release_dir", type=click.Path(file_okay=False, path_type=Path))
def verify_cmd(certs_dir, as_json, release_dir):
    """Check RELEASE_DIR offline: manifest signature, every file's sha256, every step's signature."""
    res = verify_release(release_dir, load_certs_dir(certs_dir))
    result = {"release": str(release_dir), "ok": True, "machine": res.manifest.get("machine"),
              "files": res.files, "manifest_signer": res.signer.subject.rfc4514_string()}
    emit(result, as_json, f"{release_dir}: OK ({res.files} files, manifest signed by "
                          f"{res.signer.subject.rfc4514_string()})")
