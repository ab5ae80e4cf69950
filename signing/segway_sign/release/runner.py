"""``segway-sign release``: run a signing plan over a deploy dir into a new release directory.

The deploy dir is only read. Everything is written into a temporary sibling of the output that is
renamed into place once the manifest is signed, so a failure at any step leaves no output. Running
again over the same plan and inputs finds the finished release and leaves it as it is.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from ..atomic import output_dir
from ..errors import InputError, OutputExistsError, PinError, SegwayError, TokenError
from . import manifest as mf
from . import steps as registry
from .plan import Plan, split_step_ref

OpenKey = Callable[[str], Any]
Progress = Callable[[str, int, int], None]


@dataclass
class ReleaseResult:
    out_dir: Path
    status: str  # "signed" or "unchanged"
    manifest: dict


def load_cert(path: Path) -> x509.Certificate:
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise InputError(f"cannot read certificate {path}: {e.strerror}") from None
    try:
        if b"-----BEGIN" in raw:
            return x509.load_pem_x509_certificate(raw)
        return x509.load_der_x509_certificate(raw)
    except ValueError:
        raise InputError(f"{path} is not an X.509 certificate (PEM or DER)") from None


def _public_der(key) -> bytes:
    return key.public_key().public_bytes(serialization.Encoding.DER,
                                         serialization.PublicFormat.SubjectPublicKeyInfo)


def _deploy_inputs(plan: Plan, deploy_dir: Path) -> dict[str, Path]:
    """Every deploy-dir file the plan reads (relative name → path); all must exist."""
    found: dict[str, Path] = {}
    for step in plan.steps:
        for role, value in step.inputs.items():
            if split_step_ref(value):
                continue
            path = deploy_dir / value
            if not path.is_file():
                raise InputError(f"step '{step.id}' input '{role}': {value} is not in {deploy_dir}")
            found[value] = path
    return found


def _unchanged(out_dir: Path, plan: Plan, input_hashes: dict[str, str], certs: list[x509.Certificate]) -> dict | None:
    """The existing release's manifest if it was made from this plan and these inputs and verifies."""
    from .verify import verify_release

    try:
        doc, _ = mf.load(out_dir)
    except SegwayError:
        return None
    if doc.get("plan", {}).get("sha256") != plan.sha256 or doc.get("inputs") != input_hashes:
        return None
    try:
        verify_release(out_dir, certs)
    except SegwayError:
        return None
    return doc


def _open_with_retry(open_key: OpenKey, uri: str, attempts: int = 4):
    """Open a key, retrying when the token is momentarily invisible.

    SoftHSM rewrites its token file on every login; another process (another CI job, or another
    p11-kit remote process) listing tokens at that moment sees none. Waiting briefly and asking
    again is the remedy the PKCS#11 notes give. A refused PIN is never retried.
    """
    for attempt in range(attempts):
        try:
            return open_key(uri)
        except PinError:
            raise
        except TokenError as err:
            if "no token matching" not in str(err) or attempt == attempts - 1:
                raise
            time.sleep(0.2 * (attempt + 1))


def _known_key(plan: Plan, name: str) -> str:
    if name not in plan.keys:
        raise InputError(f"key '{name}' is not among the plan's keys")
    return name


def run_release(plan: Plan, deploy_dir: Path, out_dir: Path, open_key: OpenKey, certs_dir: Path,
                force: bool = False, progress: Progress | None = None) -> ReleaseResult:
    deploy_dir, out_dir, certs_dir = Path(deploy_dir), Path(out_dir), Path(certs_dir)
    if not deploy_dir.is_dir():
        raise InputError(f"deploy dir {deploy_dir} does not exist")
    if out_dir.resolve().is_relative_to(deploy_dir.resolve()):
        raise InputError("the release must not be written inside the deploy dir")
    for step in plan.steps:
        registry.get(step.type)  # unknown types fail before any work
    certs = {name: load_cert(certs_dir / spec.cert) for name, spec in plan.keys.items()}
    deploy_files = _deploy_inputs(plan, deploy_dir)

    input_hashes: dict[str, str] = {}
    for rel, path in sorted(deploy_files.items()):
        if progress:
            progress(f"sha256 {rel}", 0, 1)
        input_hashes[rel] = mf.sha256_file(path)

    if out_dir.exists() and not force:
        doc = _unchanged(out_dir, plan, input_hashes, list(certs.values()))
        if doc is not None:
            return ReleaseResult(out_dir, "unchanged", doc)
        raise OutputExistsError(f"output {out_dir} exists and was made from another plan or other inputs "
                                "(use --force to replace it)")

    keys: dict[str, Any] = {}

    def key_for(name: str):
        if name not in keys:
            key = _open_with_retry(open_key, plan.keys[name].uri)
            if _public_der(key) != _public_der(certs[name]):
                raise InputError(f"certificate {plan.keys[name].cert} does not match key '{name}' "
                                 f"({mf.public_uri(plan.keys[name].uri)})")
            keys[name] = key
        return keys[name]

    with output_dir(out_dir, force=force) as tmp:
        step_records = []
        for step in plan.steps:
            stype = registry.get(step.type)
            if stype.needs_key and not step.key:
                raise InputError(f"step '{step.id}' (type {step.type}) needs a key")
            if stype.options and not set(step.options) <= stype.options:
                extra = ", ".join(sorted(set(step.options) - stype.options))
                raise InputError(f"step '{step.id}': unknown option(s) {extra} for type {step.type}")
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
                    path = deploy_files[value]
                    hashes[role] = input_hashes[value]
                inputs[role] = path
            step_dir = tmp / step.id
            step_dir.mkdir()
            try:
                key = key_for(step.key) if step.key else None
                ctx = registry.StepContext(step, step_dir, inputs, hashes, key,
                                           certs[step.key] if step.key else None, progress,
                                           named_key=lambda name: (key_for(_known_key(plan, name)), certs[name]),
                                           certs_dir=certs_dir)
                details = stype.run(ctx)
            except SegwayError as e:
                raise type(e)(f"step '{step.id}': {e}") from None
            outputs = {}
            for f in sorted(step_dir.rglob("*")):
                if f.is_file():
                    outputs[f.relative_to(tmp).as_posix()] = mf.sha256_file(f)
            step_records.append({
                "id": step.id, "type": step.type, "key": step.key,
                "inputs": {role: step.inputs[role] for role in sorted(step.inputs)},
                "input_sha256": hashes, "options": step.options, "outputs": outputs, "details": details,
            })
        doc = {
            "format": mf.FORMAT,
            "machine": plan.machine,
            "plan": {"file": plan.path.name, "sha256": plan.sha256},
            "created": mf.release_time(),
            "tools": mf.tool_versions(),
            "keys": {
                name: {"uri": mf.public_uri(spec.uri), "certificate": spec.cert,
                       "certificate_sha256": mf.cert_fingerprint(certs[name]),
                       "subject": certs[name].subject.rfc4514_string()}
                for name, spec in sorted(plan.keys.items())
            },
            "manifest_key": plan.manifest_key,
            "inputs": input_hashes,
            "steps": step_records,
            "outputs": {k: v for r in step_records for k, v in r["outputs"].items()},
        }
        raw = mf.encode(doc)
        sig = mf.sign(raw, key_for(plan.manifest_key), certs[plan.manifest_key])
        (tmp / mf.MANIFEST).write_bytes(raw)
        (tmp / mf.SIGNATURE).write_bytes(sig)
        for f in tmp.rglob("*"):
            os.chmod(f, 0o755 if f.is_dir() else 0o644)
    return ReleaseResult(out_dir, "signed", doc)
