"""Signing plans (``conf/signing/<machine>.yaml``): loading, validation and dependency order.

A plan names the keys (PKCS#11 URI + certificate file), then the steps. Each step has a type from the
step registry, a key, inputs and options. An input is either a file in the deploy dir or
``step:<id>/<file>`` — an output of an earlier step, which is what orders the steps (plus ``after:``).
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from ..errors import InputError
from .files import read_regular

PLAN_VERSION = 1
# A plan is a few levels deep (steps > options > values) and a few hundred values long; these bounds
# refuse nesting that would exhaust the parser's stack and aliases that expand to huge documents.
MAX_DEPTH = 32
MAX_VALUES = 100_000
_ID = re.compile(r"^[a-z0-9][a-z0-9_-]{0,62}$")
_STEP_REF = re.compile(r"^step:([a-z0-9][a-z0-9_-]*)/(.+)$")


@dataclass(frozen=True)
class KeySpec:
    name: str
    uri: str
    cert: str  # certificate file name, looked up in the certificates directory


@dataclass(frozen=True)
class Step:
    id: str
    type: str
    key: str | None
    inputs: dict[str, str]
    options: dict[str, Any]
    after: tuple[str, ...] = ()

    def depends_on(self) -> set[str]:
        deps = set(self.after)
        for value in self.inputs.values():
            m = _STEP_REF.match(value)
            if m:
                deps.add(m.group(1))
        return deps


@dataclass(frozen=True)
class Plan:
    path: Path
    sha256: str
    machine: str
    keys: dict[str, KeySpec]
    manifest_key: str
    steps: tuple[Step, ...]  # in dependency order
    extra: dict[str, Any] = field(default_factory=dict)


def split_step_ref(value: str) -> tuple[str, str] | None:
    m = _STEP_REF.match(value)
    return (m.group(1), m.group(2)) if m else None


def _req(mapping: dict, key: str, where: str, kind=str):
    if key not in mapping:
        raise InputError(f"{where}: missing '{key}'")
    value = mapping[key]
    if not isinstance(value, kind):
        raise InputError(f"{where}: '{key}' must be a {kind.__name__ if isinstance(kind, type) else 'mapping'}")
    return value


def _safe_rel(path: str, where: str) -> str:
    p = Path(path)
    if p.is_absolute() or ".." in p.parts or not path:
        raise InputError(f"{where}: '{path}' must be a relative path inside the deploy dir")
    return path


def _check_shape(node: yaml.Node, where: str) -> None:
    """Refuse a document nested deeper than MAX_DEPTH or holding more than MAX_VALUES values once
    its aliases are expanded (an alias cycle counts as too deep). Walks the composed nodes without
    recursion and stops at the first bound exceeded."""
    todo = [(node, 1)]
    count = 0
    while todo:
        node, depth = todo.pop()
        count += 1
        if depth > MAX_DEPTH:
            raise InputError(f"{where} is nested more than {MAX_DEPTH} levels deep")
        if count > MAX_VALUES:
            raise InputError(f"{where} holds more than {MAX_VALUES} values (aliases included)")
        if isinstance(node, yaml.SequenceNode):
            todo.extend((child, depth + 1) for child in node.value)
        elif isinstance(node, yaml.MappingNode):
            todo.extend((child, depth + 1) for pair in node.value for child in pair)


def _plain(value, where: str) -> None:
    """Option values go into manifest.json: text, numbers, booleans, null, lists and mappings with
    text keys only (not dates, binary or sets, which YAML tags can make)."""
    todo = [value]
    while todo:
        v = todo.pop()
        if isinstance(v, dict):
            if not all(isinstance(k, str) for k in v):
                raise InputError(f"{where}: option mappings need text keys")
            todo.extend(v.values())
        elif isinstance(v, list):
            todo.extend(v)
        elif not (v is None or isinstance(v, (str, int, float, bool))):
            raise InputError(f"{where}: a {type(v).__name__} value; options are text, numbers, booleans, "
                             "null, and lists or mappings of them")


def _load_yaml(raw: bytes, path: Path):
    where = f"plan {path.name}"
    loader = None
    try:
        loader = yaml.SafeLoader(raw)  # reads the encoding mark already: may raise a ReaderError
        node = loader.get_single_node()
        if node is None:
            return None
        _check_shape(node, where)
        return loader.construct_document(node)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        at = f" at line {mark.line + 1}" if mark else ""
        raise InputError(f"{where} is not valid YAML{at}") from None
    except RecursionError:
        raise InputError(f"{where} is nested more than {MAX_DEPTH} levels deep") from None
    except (ValueError, OverflowError, TypeError, AttributeError) as e:  # a value its tag cannot take
        raise InputError(f"{where} is not valid YAML ({str(e).splitlines()[0] if str(e) else type(e).__name__})") \
            from None
    finally:
        if loader is not None:
            loader.dispose()


PLAN_MAX_BYTES = 16 << 20  # far above any real plan; bounds what a hostile one costs


def load_plan(path: str | Path, known_types: set[str] | None = None) -> Plan:
    """Read and validate a plan; raises InputError naming the first problem."""
    path = Path(path)
    # A FIFO or device as the plan is refused at once instead of waited on; a plan is small text.
    raw = read_regular(path, PLAN_MAX_BYTES, "plan", follow_symlinks=True)
    doc = _load_yaml(raw, path)
    where = f"plan {path.name}"
    if not isinstance(doc, dict):
        raise InputError(f"{where}: top level must be a mapping")
    if doc.get("version") != PLAN_VERSION:
        raise InputError(f"{where}: 'version' must be {PLAN_VERSION}")
    machine = _req(doc, "machine", where)
    keys: dict[str, KeySpec] = {}
    for name, spec in _req(doc, "keys", where, dict).items():
        kw = f"{where}: key '{name}'"
        if not isinstance(name, str):
            raise InputError(f"{kw}: key names are text")
        if not isinstance(spec, dict):
            raise InputError(f"{kw} must be a mapping")
        uri = _req(spec, "uri", kw)
        if not uri.startswith("pkcs11:"):
            raise InputError(f"{kw}: uri must be an RFC 7512 pkcs11: URI")
        if re.search(r"[;?&]pin-value=", uri):
            raise InputError(f"{kw}: the URI carries a PIN; give the PIN with --pin-file or --pin-env")
        keys[name] = KeySpec(name, uri, _req(spec, "cert", kw))
    manifest_key = _req(doc, "manifest_key", where)
    if manifest_key not in keys:
        raise InputError(f"{where}: manifest_key '{manifest_key}' is not among the keys")
    steps: dict[str, Step] = {}
    for i, s in enumerate(_req(doc, "steps", where, list)):
        sw = f"{where}: step {i + 1}"
        if not isinstance(s, dict):
            raise InputError(f"{sw} must be a mapping")
        sid = _req(s, "id", sw)
        sw = f"{where}: step '{sid}'"
        if not _ID.match(sid):
            raise InputError(f"{sw}: id must be lowercase letters, digits, '-' or '_'")
        if sid in steps:
            raise InputError(f"{sw}: duplicate id")
        stype = _req(s, "type", sw)
        if known_types is not None and stype not in known_types:
            raise InputError(f"{sw}: unknown type '{stype}' (known: {', '.join(sorted(known_types))})")
        key = s.get("key")
        if key is not None and (not isinstance(key, str) or key not in keys):
            raise InputError(f"{sw}: key '{key}' is not among the keys")
        inputs = s.get("inputs", {})
        if not isinstance(inputs, dict) or not all(isinstance(r, str) and isinstance(v, str)
                                                   for r, v in inputs.items()):
            raise InputError(f"{sw}: 'inputs' must map roles to file names")
        for role, value in inputs.items():
            ref = split_step_ref(value)
            _safe_rel(ref[1] if ref else value, f"{sw} input '{role}'")
        options = s.get("options", {})
        if not isinstance(options, dict) or not all(isinstance(k, str) for k in options):
            raise InputError(f"{sw}: 'options' must be a mapping from option names")
        _plain(options, f"{sw} options")
        after = s.get("after", [])
        if not isinstance(after, list) or not all(isinstance(a, str) for a in after):
            raise InputError(f"{sw}: 'after' must be a list of step ids")
        unknown = set(s) - {"id", "type", "key", "inputs", "options", "after"}
        if unknown:
            raise InputError(f"{sw}: unknown field(s) {', '.join(sorted(map(str, unknown)))}")
        steps[sid] = Step(sid, stype, key, dict(inputs), dict(options), tuple(after))
    if not steps:
        raise InputError(f"{where}: no steps")
    ordered = dependency_order(steps, where)
    return Plan(path, hashlib.sha256(raw).hexdigest(), machine, keys, manifest_key, tuple(ordered))


def dependency_order(steps: dict[str, Step], where: str = "plan") -> list[Step]:
    """Topological order, stable with respect to the order in the file; cycles are an error."""
    for s in steps.values():
        for dep in s.depends_on():
            if dep not in steps:
                raise InputError(f"{where}: step '{s.id}' depends on unknown step '{dep}'")
            if dep == s.id:
                raise InputError(f"{where}: step '{s.id}' depends on itself")
    done: list[Step] = []
    placed: set[str] = set()
    pending = list(steps.values())
    while pending:
        ready = [s for s in pending if s.depends_on() <= placed]
        if not ready:
            cycle = ", ".join(s.id for s in pending)
            raise InputError(f"{where}: dependency cycle among steps {cycle}")
        step = ready[0]
        done.append(step)
        placed.add(step.id)
        pending.remove(step)
    return done
