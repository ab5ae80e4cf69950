"""``segway-sign release``: run a signing plan over a deploy dir into a new release directory.

A run has three parts: :func:`check_plan` (everything that can be checked before any work: step
types and their options, certificates, deploy-dir inputs and their sha256), :func:`run_steps` (each
step into its own directory) and the manifest (:func:`segway_sign.release.manifest.build`, signed by
the plan's manifest key). The deploy dir is only read. Everything is written into a temporary
sibling of the output that is renamed into place once the manifest is signed, so a failure at any
step leaves no output. Running again over the same plan and inputs finds the finished release and
leaves it as it is.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from cryptography import x509

from ..atomic import output_dir
from ..crypto import spki_der
from ..errors import InputError, OutputExistsError, SegwayError
from . import manifest as mf
from . import steps as registry
from .certs import load_certificate
from .plan import Plan, split_step_ref
from .verify import verify_release

OpenKey = Callable[[str], Any]
Progress = Callable[[str, int, int], None]


@dataclass
class ReleaseResult:
    out_dir: Path
    status: str  # "signed" or "unchanged"
    manifest: dict


@dataclass
class CheckedPlan:
    """A plan checked against its deploy dir and certificates, before any step runs."""

    plan: Plan
    deploy_dir: Path
    certs_dir: Path
    certs: dict[str, x509.Certificate]  # plan key name -> its certificate
    deploy_files: dict[str, Path]  # every deploy-dir file the plan reads (relative name -> path)
    input_hashes: dict[str, str]  # relative name -> sha256


def check_plan(plan: Plan, deploy_dir: Path, out_dir: Path, certs_dir: Path,
               progress: Progress | None = None) -> CheckedPlan:
    """Refuse, before any work, what would fail later: an unknown step type, a step without the key
    its type needs, an option its type does not document, a missing certificate or deploy-dir input."""
    deploy_dir, out_dir, certs_dir = Path(deploy_dir), Path(out_dir), Path(certs_dir)
    if not deploy_dir.is_dir():
        raise InputError(f"deploy dir {deploy_dir} does not exist")
    if out_dir.resolve().is_relative_to(deploy_dir.resolve()):
        raise InputError("the release must not be written inside the deploy dir")
    for step in plan.steps:
        stype = registry.get(step.type)
        if stype.needs_key and not step.key:
            raise InputError(f"step '{step.id}' (type {step.type}) needs a key")
        if not set(step.options) <= stype.options:
            extra = ", ".join(sorted(set(step.options) - stype.options))
            raise InputError(f"step '{step.id}': unknown option(s) {extra} for type {step.type}")
        stype.check_options(step)
    certs = {name: load_certificate(certs_dir / spec.cert) for name, spec in plan.keys.items()}
    deploy_files: dict[str, Path] = {}
    for step in plan.steps:
        for role, value in step.inputs.items():
            if split_step_ref(value):
                continue
            path = deploy_dir / value
            if not path.is_file():
                raise InputError(f"step '{step.id}' input '{role}': {value} is not in {deploy_dir}")
            deploy_files[value] = path
    input_hashes: dict[str, str] = {}
    for rel, path in sorted(deploy_files.items()):
        if progress:
            progress(f"sha256 {rel}", 0, 1)
        input_hashes[rel] = mf.sha256_file(path)
    return CheckedPlan(plan, deploy_dir, certs_dir, certs, deploy_files, input_hashes)


class PlanKeys:
    """The plan's keys, each opened once when first used and checked against its certificate."""

    def __init__(self, plan: Plan, certs: dict[str, x509.Certificate], open_key: OpenKey):
        self.plan, self.certs, self.open_key = plan, certs, open_key
        self._opened: dict[str, Any] = {}

    def __call__(self, name: str):
        if name not in self._opened:
            spec = self.plan.keys[name]
            key = self.open_key(spec.uri)
            if spki_der(key.public_key()) != spki_der(self.certs[name].public_key()):
                raise InputError(f"certificate {spec.cert} does not match key '{name}' ({mf.public_uri(spec.uri)})")
            self._opened[name] = key
        return self._opened[name]

    def named(self, name: str) -> tuple[Any, x509.Certificate]:
        """A key a step's option names (the hab step's img_key, …), with its certificate."""
        if name not in self.plan.keys:
            raise InputError(f"key '{name}' is not among the plan's keys")
        return self(name), self.certs[name]


def run_steps(checked: CheckedPlan, tmp: Path, keys: PlanKeys, progress: Progress | None = None) -> list[dict]:
    """Run every step, in plan order, into ``tmp/<step id>``; return their manifest records."""
    records = []
    for step in checked.plan.steps:
        stype = registry.get(step.type)
        inputs: dict[str, Path] = {}
        hashes: dict[str, str] = {}
        for role, value in step.inputs.items():
            ref = split_step_ref(value)
            if ref:
                path = tmp / ref[0] / ref[1]
                if not path.is_file():
                    raise InputError(f"step '{step.id}' input '{role}': step '{ref[0]}' made no {ref[1]}")
                hashes[role] = mf.sha256_file(path)
            else:
                path = checked.deploy_files[value]
                hashes[role] = checked.input_hashes[value]
            inputs[role] = path
        step_dir = tmp / step.id
        step_dir.mkdir()
        try:
            key = keys(step.key) if step.key else None
            ctx = registry.StepContext(step, step_dir, inputs, hashes, key,
                                       checked.certs[step.key] if step.key else None, progress,
                                       named_key=keys.named, certs_dir=checked.certs_dir)
            details = stype.run(ctx)
        except SegwayError as e:
            raise type(e)(f"step '{step.id}': {e}") from None
        outputs = {f.relative_to(tmp).as_posix(): ctx.output_sha256.get(f.relative_to(step_dir).as_posix())
                   or mf.sha256_file(f) for f in sorted(step_dir.rglob("*")) if f.is_file()}
        records.append(mf.step_record(step, hashes, outputs, details))
    return records


def _unchanged(out_dir: Path, checked: CheckedPlan) -> dict | None:
    """The existing release's manifest if it was made from this plan and these inputs and verifies."""
    try:
        doc, _ = mf.load(out_dir)
    except SegwayError:
        return None
    if doc.get("plan", {}).get("sha256") != checked.plan.sha256 or doc.get("inputs") != checked.input_hashes:
        return None
    try:
        verify_release(out_dir, list(checked.certs.values()))
    except SegwayError:
        return None
    return doc


def run_release(plan: Plan, deploy_dir: Path, out_dir: Path, open_key: OpenKey, certs_dir: Path,
                force: bool = False, progress: Progress | None = None) -> ReleaseResult:
    out_dir = Path(out_dir)
    checked = check_plan(plan, deploy_dir, out_dir, certs_dir, progress)
    if out_dir.exists() and not force:
        doc = _unchanged(out_dir, checked)
        if doc is not None:
            return ReleaseResult(out_dir, "unchanged", doc)
        raise OutputExistsError(f"output {out_dir} exists and was made from another plan or other inputs "
                                "(use --force to replace it)")
    keys = PlanKeys(plan, checked.certs, open_key)
    with output_dir(out_dir, force=force) as tmp:
        records = run_steps(checked, tmp, keys, progress)
        doc = mf.build(plan, checked.certs, checked.input_hashes, records)
        raw = mf.encode(doc)
        sig = mf.sign(raw, keys(plan.manifest_key), checked.certs[plan.manifest_key])
        (tmp / mf.MANIFEST).write_bytes(raw)
        (tmp / mf.SIGNATURE).write_bytes(sig)
        for f in tmp.rglob("*"):
            os.chmod(f, 0o755 if f.is_dir() else 0o644)
    return ReleaseResult(out_dir, "signed", doc)
