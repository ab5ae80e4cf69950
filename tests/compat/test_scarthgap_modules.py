"""segway-sign and segway-kms with the Python modules a scarthgap build gives them.

kms/pyproject.toml and signing/pyproject.toml pin the developers' versions; bitbake builds both
distributions against the recipes of the layers kas/base.yml pins instead. scripts/bootstrap installs
those versions (conf/python/scarthgap-constraints.txt) into .venv/compat-scarthgap and builds segway-sign
and segway-kms into it as bitbake does. These tests check that the virtualenv really holds that module
set, then run part of the suite with its interpreter: KMS round trips on swtpm and SoftHSM, CA and CRL,
audit, attestation; FIT, STM32 and dm-verity signing checked by mkimage/U-Boot, openssl and veritysetup.
"""
from __future__ import annotations

import ast
import filecmp
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
VENV = REPO / ".venv" / "compat-scarthgap"
PYTHON = VENV / "bin" / "python"
CONSTRAINTS = REPO / "conf" / "python" / "scarthgap-constraints.txt"
SOURCES = {"segway_sign": REPO / "signing" / "segway_sign", "segway_kms": REPO / "kms" / "segway_kms"}
RECIPES = {"segway_kms": REPO / "meta-segway/recipes-security/segway-kms/segway-kms_0.1.0.bb",
           "segway_sign": REPO / "meta-segway/recipes-devtools/segway-sign/segway-sign-native_0.1.0.bb"}

# The part of the suite run under the scarthgap modules (two to three minutes on two cores). Left out:
# the RBAC matrix and the systemd unit checks, which exercise no module the scarthgap versions change.
SUBSET = [
    "tests/kms/attestation",
    "tests/kms/audit",
    "tests/kms/backends",
    "tests/kms/ca",
    "tests/kms/cli",
    "tests/kms/server/test_api.py",
    "tests/kms/server/test_daemon.py",
    "tests/kms/server/test_robustness.py",
    "tests/signing/formats/fit/test_fit.py",
    "tests/signing/formats/fit/test_fit_uboot.py",
    "tests/signing/formats/stm32/test_stm32.py",
    "tests/signing/formats/verity/test_verity.py",
    "tests/signing/cli/test_fit_cli.py",
    "tests/signing/cli/test_stm32_cli.py",
    "tests/signing/cli/test_verity_cli.py",
]
HEADER = re.compile(r"^#\s*---\s*(runtime|build only)")
PIN = re.compile(r"^([A-Za-z0-9._-]+)==(\S+)\s+#\s*(\S+)\s+(\S+\.bb)\b")


def pins() -> dict[str, dict]:
    """name -> {version, role ("runtime"/"build"), layer, recipe, pn} from the constraints file."""
    out, role = {}, None
    for line in CONSTRAINTS.read_text().splitlines():
        if m := HEADER.match(line):
            role = "build" if m.group(1) == "build only" else "runtime"
            continue
        if not line.strip() or line.startswith("#"):
            continue
        m = PIN.match(line)
        assert m and role, f"{CONSTRAINTS.name}: not 'name==version  # <layer> <recipe>.bb': {line!r}"
        out[m.group(1)] = {"version": m.group(2), "role": role, "layer": m.group(3), "recipe": m.group(4),
                           "pn": Path(m.group(4)).name.split("_")[0]}
    return out


def normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def compat(code: str, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    """Run code with the compat interpreter, away from the source tree (so imports come from the venv)."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
    return subprocess.run([str(PYTHON), "-c", code, *args], capture_output=True, text=True, timeout=timeout,
                          cwd="/", env=env)


@pytest.fixture(scope="module", autouse=True)
def compat_venv():
    if not PYTHON.exists():
        pytest.fail(f"{VENV} missing: run bash scripts/bootstrap")


def test_constraints_name_a_recipe_for_every_pin():
    p = pins()
    assert {"cryptography", "grpcio", "grpcio-tools", "grpcio-health-checking", "protobuf", "tpm2-pytss",
            "pylibfdt", "python-pkcs11", "click", "PyYAML", "asn1crypto", "setuptools"} <= set(p)
    assert all(v["pn"].startswith("python3-") for v in p.values())


def test_interpreter_is_python_3_12_where_the_machine_has_one():
    """scarthgap's python3 is 3.12; scripts/bootstrap falls back to Debian's 3.11 only without a 3.12."""
    r = compat("import sys; print(sys.version_info[0], sys.version_info[1])")
    assert r.returncode == 0, r.stderr
    version = tuple(map(int, r.stdout.split()))
    pyenv = Path(os.environ.get("PYENV_ROOT", Path.home() / ".pyenv"))
    available = [Path("/usr/bin/python3.12"), Path("/usr/local/bin/python3.12"),
                 *pyenv.glob("versions/3.12*/bin/python3.12")]
    if not any(os.access(p, os.X_OK) for p in available):
        assert version == (3, 11), version
        pytest.skip("no Python 3.12 on this machine: the scarthgap modules run on Debian's 3.11")
    assert version == (3, 12), f"{VENV.name} runs Python {version}, a 3.12 exists: run bash scripts/bootstrap"


def test_own_recipes_carry_the_pinned_versions():
    """Pins naming a meta-segway recipe: the recipe exists and its file name has the pinned version."""
    own = [(name, v) for name, v in pins().items() if v["layer"] == "meta-segway"]
    assert {name for name, _ in own} >= {"python-pkcs11", "grpcio-health-checking", "tpm2-pytss"}
    for name, v in own:
        recipe = REPO / "meta-segway" / v["recipe"]
        assert recipe.is_file(), recipe
        assert recipe.name == f"{v['pn']}_{v['version']}.bb", (name, recipe.name)


@pytest.mark.skipif(not os.environ.get("SEGWAY_LAYERS_DIR"), reason="set SEGWAY_LAYERS_DIR to layer checkouts")
def test_pins_match_the_recipes_in_the_checkouts():
    """With checkouts of the layers at the kas/base.yml commits: every other recipe named exists and
    has the pinned version (pylibfdt: PyPI's 1.7.0.post1 for dtc 1.7.0, see the constraints file)."""
    root = Path(os.environ["SEGWAY_LAYERS_DIR"])
    for name, v in pins().items():
        if v["layer"] == "meta-segway":
            continue
        recipe = root / v["layer"] / v["recipe"]
        assert recipe.is_file(), f"{name}: {recipe} does not exist"
        pv = recipe.stem.split("_")[1]
        assert v["version"] == pv or v["version"].startswith(pv + ".post"), (name, v["version"], recipe.name)


def test_versions_are_the_scarthgap_ones():
    wanted = {normalise(k): v["version"] for k, v in pins().items()}
    r = compat("import json, sys, importlib.metadata as md\n"
               "print(json.dumps({d.metadata['Name']: d.version for d in md.distributions()}))")
    assert r.returncode == 0, r.stderr
    installed = {normalise(k): v for k, v in json.loads(r.stdout).items()}
    for name, version in sorted(wanted.items()):
        assert installed.get(name) == version, (
            f"{name}: {installed.get(name)} in {VENV.name}, {version} in {CONSTRAINTS.name}")


def test_segway_distributions_are_built_copies_of_the_working_tree():
    r = compat("import json, segway_sign, segway_kms, importlib.metadata as md\n"
               "print(json.dumps({m.__name__: m.__path__[0] for m in (segway_sign, segway_kms)}))\n"
               "print(json.dumps([md.distribution(d).read_text('direct_url.json') for d in "
               "('segway-sign', 'segway-kms')]))")
    assert r.returncode == 0, r.stderr
    first, second = r.stdout.splitlines()
    for direct_url in json.loads(second):
        assert not json.loads(direct_url or "{}").get("dir_info", {}).get("editable"), direct_url
    stale = []
    for package, installed in json.loads(first).items():
        installed = Path(installed)
        assert VENV in installed.parents, installed
        for src in sorted(SOURCES[package].rglob("*.py")):
            if src.name.endswith(("_pb2.py", "_pb2_grpc.py")) or "__pycache__" in src.parts:
                continue
            dst = installed / src.relative_to(SOURCES[package])
            if not dst.exists() or not filecmp.cmp(src, dst, shallow=False):
                stale.append(str(src.relative_to(REPO)))
    assert not stale, f"{VENV.name} runs older code than {', '.join(stale[:5])}: run bash scripts/bootstrap"


def test_kms_stubs_are_what_scarthgap_grpcio_tools_generates(tmp_path):
    """The image's stubs come from python3-grpcio-tools-native: regenerate them with that version and
    compare with what the compat build installed (and the tests below import)."""
    code = ("import sys, grpc_tools, segway_kms.api as api\n"
            "from pathlib import Path\n"
            "from grpc_tools import protoc\n"
            "src, out = Path(sys.argv[1]), sys.argv[2]\n"
            "inc = Path(grpc_tools.__file__).parent / '_proto'\n"
            "rc = protoc.main(['protoc', f'-I{src}', f'-I{inc}', f'--python_out={out}', f'--pyi_out={out}',\n"
            "                  f'--grpc_python_out={out}', str(src / 'segway_kms/api/kms.proto')])\n"
            "print(rc, api.__path__[0])")
    r = compat(code, str(REPO / "kms"), str(tmp_path))
    assert r.returncode == 0, r.stderr
    rc, installed = r.stdout.split()
    assert rc == "0"
    for name in ("kms_pb2.py", "kms_pb2.pyi", "kms_pb2_grpc.py"):
        generated = tmp_path / "segway_kms" / "api" / name
        assert generated.read_bytes() == (Path(installed) / name).read_bytes(), name
    assert "GRPC_GENERATED_VERSION" not in (tmp_path / "segway_kms/api/kms_pb2_grpc.py").read_text()


@pytest.mark.parametrize("package", sorted(SOURCES))
def test_runtime_needs_only_the_image_modules(package):
    """Import every module of the package with all but the runtime distributions hidden (no setuptools,
    grpcio-tools, packaging or pytest on the device), and list the distributions it loaded."""
    runtime = sorted(normalise(k) for k, v in pins().items() if v["role"] == "runtime")
    code = r'''
import importlib, importlib.abc, importlib.metadata as md, json, pkgutil, re, sys
top, allowed = sys.argv[1], set(json.loads(sys.argv[2])) | {"segway-sign", "segway-kms"}
norm = lambda n: re.sub(r"[-_.]+", "-", n).lower()
owners = md.packages_distributions()
hidden = {mod for mod, dists in owners.items() if not {norm(d) for d in dists} & allowed}

class NotInTheImage(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] in hidden:
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None

sys.meta_path.insert(0, NotInTheImage())
pkg = importlib.import_module(top)
for info in pkgutil.walk_packages(pkg.__path__, top + "."):
    importlib.import_module(info.name)
print(json.dumps(sorted({norm(d) for m in list(sys.modules) for d in owners.get(m.partition(".")[0], [])})))
'''
    r = compat(code, package, json.dumps(runtime))
    assert r.returncode == 0, r.stderr
    used = set(json.loads(r.stdout))
    expected = {"segway_kms": {"grpcio", "grpcio-health-checking", "protobuf", "tpm2-pytss", "python-pkcs11",
                               "cryptography", "pyyaml"},
                "segway_sign": {"pylibfdt", "python-pkcs11", "cryptography", "asn1crypto", "click", "pyyaml"}}
    assert expected[package] <= used, used


def _direct_imports(package_dir: Path) -> set[str]:
    names = set()
    for path in package_dir.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names |= {a.name.partition(".")[0] for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0:
                names.add(node.module.partition(".")[0])
    return names - set(sys.stdlib_module_names) - set(SOURCES)


@pytest.mark.parametrize("package", sorted(RECIPES))
def test_recipe_depends_on_every_module_the_code_imports(package):
    """Each third-party module the code imports maps (through its distribution and the constraints
    file) to a python3-* recipe that the segway recipe names in RDEPENDS (target) or DEPENDS (native)."""
    from tests.meta_segway.layer import evaluate, import_bb

    by_dist = {normalise(k): v["pn"] for k, v in pins().items()}
    r = compat("import json, importlib.metadata as md; print(json.dumps(md.packages_distributions()))")
    assert r.returncode == 0, r.stderr
    owners = json.loads(r.stdout)
    pn = RECIPES[package].name.split("_")[0]
    d = evaluate([RECIPES[package]], {"PN": pn})
    import_bb().data.expandKeys(d)  # RDEPENDS:${PN} -> RDEPENDS:segway-kms
    if package == "segway_kms":
        declared, suffix = set((d.getVar("RDEPENDS:" + pn) or "").split()), ""
    else:
        declared, suffix = set((d.getVar("DEPENDS") or "").split()), "-native"
    assert declared, f"no dependencies read from {RECIPES[package].name}"
    for module in sorted(_direct_imports(SOURCES[package])):
        assert module in owners, f"{package} imports {module}, which no installed distribution provides"
        for dist in owners[module]:
            pn = by_dist[normalise(dist)]
            assert pn + suffix in declared, f"{package} imports {module} ({dist}): {pn}{suffix} missing " \
                                            f"from {RECIPES[package].name}"


@pytest.fixture
def short_tmp():
    """The tests below bind Unix sockets under their tmp directories: keep the base path short."""
    path = Path(tempfile.mkdtemp(prefix="segway-compat-"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.mark.slow
def test_suite_subset_passes_with_scarthgap_modules(short_tmp):
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
    env["PATH"] = f"{VENV / 'bin'}:{env['PATH']}"
    # python -m puts the working directory (the checkout) first on sys.path: the plugin is a module of
    # the tests package.
    r = subprocess.run([str(PYTHON), "-m", "pytest", "-p", "tests.compat.scarthgap_cli", "-p", "no:cacheprovider",
                        "-q", "-m", "not qemu", "--basetemp", str(short_tmp / "t"), *SUBSET],
                       cwd=REPO, env=env, capture_output=True, text=True, timeout=850)
    tail = "\n".join((r.stdout + r.stderr).splitlines()[-40:])
    assert r.returncode == 0, tail
    summary = r.stdout.strip().splitlines()[-1]
    assert re.search(r"\d+ passed", summary) and not re.search(r"failed|error|skipped", summary), summary
    assert int(re.search(r"(\d+) passed", summary).group(1)) >= 150, summary
