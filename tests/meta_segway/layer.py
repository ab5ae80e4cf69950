"""Paths of meta-segway and the kas files, and access to bitbake's own parser (the ``bb`` package
from PyPI's bitbake-setup distribution)."""
from __future__ import annotations

import re
import sys
import types
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
LAYER = REPO / "meta-segway"
KAS_DIR = REPO / "kas"

RECIPE_SUFFIXES = (".bb", ".bbappend")
METADATA_SUFFIXES = (".bb", ".bbappend", ".bbclass", ".inc")


def metadata_files(suffixes=METADATA_SUFFIXES) -> list[Path]:
    return sorted(p for p in LAYER.rglob("*") if p.is_file() and p.name.endswith(suffixes))


def conf_files() -> list[Path]:
    return sorted((LAYER / "conf").rglob("*.conf")) + sorted((LAYER / "conf").rglob("*.inc"))


def import_bb():
    """Import bitbake's parser. bitbake-setup ships bb without the hash-equivalence client that
    bb.siggen imports at module level; parsing never calls it, so an empty module stands in."""
    for name in ("hashserv", "hashserv.client"):
        if name not in sys.modules:
            module = types.ModuleType(name)
            module.__path__ = []
            sys.modules[name] = module
    import bb.data
    import bb.parse
    import bb.parse.ast
    from bb.parse.parse_py import BBHandler, ConfHandler  # noqa: F401 (registers the handlers)
    return bb


def statements(path: Path):
    """Parse a file with bitbake's own parser into its AST statement group (no evaluation)."""
    bb = import_bb()
    from bb.parse.parse_py import BBHandler, ConfHandler
    path = Path(path)
    if path.suffix in (".bb", ".bbappend", ".bbclass") or (path.suffix == ".inc" and "/conf/" not in str(path)):
        BBHandler.cached_statements.pop(str(path), None)
        return BBHandler.get_statements(str(path), str(path), path.name)
    group = bb.parse.ast.StatementGroup()
    lines = path.read_text().splitlines()
    i = 0
    while i < len(lines):
        lineno = i + 1
        s = lines[i].rstrip()
        i += 1
        if not s.strip():
            continue
        while s.endswith("\\"):
            s = s[:-1] + lines[i].rstrip()
            i += 1
        if s.lstrip().startswith("#"):
            continue
        # layer.conf is read as base configuration (addpylib is only allowed there).
        ConfHandler.feeder(lineno, s, str(path), group, baseconfig=path.name == "layer.conf", conffile=True)
    return group


def evaluate(paths, preset: dict[str, str] | None = None, shell_functions: bool = False):
    """A datastore holding the assignments of paths (in order) on top of preset, and with
    shell_functions their shell functions (do_compile() { ... }). include, require and inherit
    statements are not followed: they name files of other layers."""
    bb = import_bb()
    d = bb.data.init()
    for key, value in (preset or {}).items():
        d.setVar(key, value)
    for path in paths:
        for node in statements(path):
            if isinstance(node, (bb.parse.ast.DataNode, bb.parse.ast.ExportNode, bb.parse.ast.UnsetNode)):
                node.eval(d)
            elif shell_functions and isinstance(node, bb.parse.ast.MethodNode) and not node.python:
                node.eval(d)
    return d


INLINE_PYTHON = re.compile(r"\$\{@")


def inline_python(text: str) -> list[str]:
    """Every ${@...} expression in text, with nested braces balanced."""
    found = []
    for match in INLINE_PYTHON.finditer(text):
        depth, j = 1, match.end()
        while j < len(text) and depth:
            depth += {"{": 1, "}": -1}.get(text[j], 0)
            j += 1
        found.append(text[match.end():j - 1])
    return found


def python_task(path: Path, name: str, namespace: dict | None = None):
    """A python task of a recipe file, compiled as bitbake runs it (body with d in scope).
    ``namespace`` adds the class functions the task calls."""
    import os
    bb = import_bb()
    for node in statements(path):
        if isinstance(node, bb.parse.ast.MethodNode) and node.python and node.func_name == name:
            scope = {"bb": bb, "os": os, **(namespace or {})}
            exec(compile("def %s(d):\n%s\n" % (name, "\n".join(node.body)), str(path), "exec"), scope)
            return scope[name]
    raise AssertionError("%s: no python task %s" % (path.name, name))


def segway_sign_bindir() -> str:
    """The directory holding the segway-sign this interpreter runs (the project's venv), for a
    task's PATH: the tests do not rely on the caller's PATH."""
    import os
    import sys
    here = Path(sys.executable).parent
    if (here / "segway-sign").is_file():
        return str(here)
    import shutil
    found = shutil.which("segway-sign")
    assert found, "segway-sign is not installed next to %s nor on PATH" % sys.executable
    return os.path.dirname(found)


def class_functions(*names: str) -> dict:
    """The ``def`` functions of classes (file names under meta-segway/classes), as bitbake's method
    pool holds them, in one namespace with ``bb``."""
    bb = import_bb()
    namespace = {"bb": bb}
    for name in names:
        path = LAYER / "classes" / name
        for node in statements(path):
            if isinstance(node, bb.parse.ast.PythonMethodNode):
                exec(compile("\n".join(node.body), str(path), "exec"), namespace)
    return namespace
