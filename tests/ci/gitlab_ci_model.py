"""Just enough of GitLab CI's YAML semantics to test .gitlab-ci.yml without a GitLab: local includes,
``!reference`` tags, ``extends`` (deep merge, multiple parents) and rule expressions."""

from __future__ import annotations

import copy
import re
from pathlib import Path

import yaml

RESERVED = {"default", "include", "stages", "variables", "workflow", "image", "services", "cache",
            "before_script", "after_script"}


class Reference(list):
    """An unresolved ``!reference [job, key, ...]``."""


class CiLoader(yaml.SafeLoader):
    pass


CiLoader.add_constructor("!reference", lambda loader, node: Reference(loader.construct_sequence(node)))


def load_yaml(path: Path):
    return yaml.load(path.read_text(), Loader=CiLoader)


def load_pipeline(root: Path) -> dict:
    """The root file merged with its local includes (GitLab: included first, root file wins)."""
    main = load_yaml(root / ".gitlab-ci.yml")
    merged: dict = {}
    includes = main.get("include", [])
    for inc in includes if isinstance(includes, list) else [includes]:
        local = inc["local"] if isinstance(inc, dict) else inc
        path = root / local.lstrip("/")
        if not path.is_file():
            raise FileNotFoundError(f"include:local {local} does not exist")
        merged = deep_merge(merged, load_yaml(path))
    return deep_merge(merged, {k: v for k, v in main.items() if k != "include"})


def deep_merge(base, over):
    if isinstance(base, dict) and isinstance(over, dict):
        out = dict(base)
        for k, v in over.items():
            out[k] = deep_merge(base[k], v) if k in base else copy.deepcopy(v)
        return out
    return copy.deepcopy(over)


def resolve_extends(doc: dict, name: str, seen: tuple = ()) -> dict:
    if name in seen:
        raise ValueError(f"extends cycle: {' -> '.join(seen + (name,))}")
    if name not in doc:
        raise KeyError(f"{seen[-1] if seen else name} extends unknown {name}")
    job = doc[name]
    parents = job.get("extends", [])
    parents = [parents] if isinstance(parents, str) else parents
    merged: dict = {}
    for parent in parents:
        merged = deep_merge(merged, resolve_extends(doc, parent, seen + (name,)))
    return deep_merge(merged, {k: v for k, v in job.items() if k != "extends"})


def resolve_references(doc: dict, value):
    if isinstance(value, Reference):
        target = doc
        for part in value:
            if not isinstance(target, dict) or part not in target:
                raise KeyError(f"!reference {list(value)} does not resolve")
            target = target[part]
        return resolve_references(doc, target)
    if isinstance(value, dict):
        return {k: resolve_references(doc, v) for k, v in value.items()}
    if isinstance(value, list):
        out = []
        for item in value:
            resolved = resolve_references(doc, item)
            # GitLab flattens a referenced list nested in a list (rules, script).
            if isinstance(item, Reference) and isinstance(resolved, list):
                out.extend(resolved)
            else:
                out.append(resolved)
        return out
    return value


def jobs(doc: dict) -> dict[str, dict]:
    """Every visible job, with extends and !reference resolved."""
    out = {}
    for name, value in doc.items():
        if name in RESERVED or name.startswith(".") or not isinstance(value, dict):
            continue
        out[name] = resolve_references(doc, resolve_extends(doc, name))
    return out


def expand(text: str, variables: dict[str, str]) -> str:
    def sub(m):
        return str(variables.get(m.group(1) or m.group(2), m.group(0)))
    for _ in range(5):
        text = re.sub(r"\$\{(\w+)\}|\$(\w+)", sub, text)
    return text


_TOKEN = re.compile(r'\s*(\$\w+|"[^"]*"|\'[^\']*\'|==|!=|&&|\|\||\(|\))')


def evaluate(expr: str, env: dict[str, str]) -> bool:
    """GitLab ``rules:if``: $VAR, "string", ==, !=, &&, ||, parentheses."""
    tokens = []
    pos = 0
    while pos < len(expr.strip()):
        m = _TOKEN.match(expr, pos)
        if not m:
            raise ValueError(f"cannot parse rule expression at {expr[pos:]!r}")
        tokens.append(m.group(1))
        pos = m.end()
        if not expr[pos:].strip():
            break

    def value(tok):
        if tok.startswith("$"):
            return env.get(tok[1:])
        return tok[1:-1]

    def parse_or(i):
        v, i = parse_and(i)
        while i < len(tokens) and tokens[i] == "||":
            w, i = parse_and(i + 1)
            v = v or w
        return v, i

    def parse_and(i):
        v, i = parse_cmp(i)
        while i < len(tokens) and tokens[i] == "&&":
            w, i = parse_cmp(i + 1)
            v = v and w
        return v, i

    def parse_cmp(i):
        if tokens[i] == "(":
            v, i = parse_or(i + 1)
            return v, i + 1
        left = value(tokens[i])
        if i + 1 < len(tokens) and tokens[i + 1] in ("==", "!="):
            right = value(tokens[i + 2])
            return (left == right) == (tokens[i + 1] == "=="), i + 3
        return bool(left), i + 1

    result, _ = parse_or(0)
    return bool(result)


def job_runs(job: dict, env: dict[str, str]) -> bool:
    """Whether ``rules`` let the job run (no rules: it runs)."""
    rules = job.get("rules")
    if rules is None:
        return True
    for rule in rules:
        if "if" not in rule or evaluate(rule["if"], env):
            return rule.get("when", "on_success") != "never"
    return False
