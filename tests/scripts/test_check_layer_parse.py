"""scripts/check-layer-parse: the checkout layouts it accepts (poky for scarthgap; bitbake +
openembedded-core + meta-yocto for wrynose), the series check against openembedded-core, and the
layer set it hands bitbake, compared with the kas files. Parsing itself needs real layer checkouts
and a non-root user; CI has neither, so bitbake is not run here."""
from __future__ import annotations

import argparse
import importlib.machinery
import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "scripts" / "check-layer-parse"


def load_script():
    loader = importlib.machinery.SourceFileLoader("check_layer_parse", str(SCRIPT))
    spec = importlib.util.spec_from_loader(loader.name, loader)
    module = importlib.util.module_from_spec(spec)
    loader.exec_module(module)
    return module


clp = load_script()


def checkouts(root: Path, series: str, layout: str) -> dict[str, Path]:
    """Empty directory trees shaped like the checkouts (kas repository names); openembedded-core's
    meta/conf/layer.conf declares the series."""
    names = ["meta-openembedded", "meta-arm", "meta-security", "meta-freescale"]
    names += ["poky"] if layout == "poky" else ["bitbake", "openembedded-core", "meta-yocto"]
    dirs = {name: root / name for name in names}
    for path in dirs.values():
        path.mkdir(parents=True)
    core = dirs["poky"] if layout == "poky" else dirs["openembedded-core"]
    (core / "meta" / "conf").mkdir(parents=True)
    (core / "meta" / "conf" / "layer.conf").write_text(
        'BBFILE_COLLECTIONS += "core"\nLAYERSERIES_CORENAMES = "%s"\nLAYERSERIES_COMPAT_core = "%s"\n'
        % (series, series))
    return dirs


def argv(dirs: dict[str, Path], *extra: str) -> list[str]:
    return [arg for name, path in dirs.items() for arg in ("--" + name, str(path))] + list(extra)


def run_script(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, timeout=60)


def test_poky_layout_is_the_scarthgap_default(tmp_path):
    dirs = checkouts(tmp_path, "scarthgap", "poky")
    args = clp.parse_args(argv(dirs))
    assert args.series == "scarthgap"
    assert clp.bitbake_dir(args) == dirs["poky"] / "bitbake"
    layers = clp.layers(args, None)
    assert layers[:2] == [(dirs["poky"] / "meta").resolve(), (dirs["poky"] / "meta-poky").resolve()]
    assert layers[-1] == REPO / "meta-segway"


def test_split_layout_for_wrynose(tmp_path):
    dirs = checkouts(tmp_path, "wrynose", "split")
    args = clp.parse_args(argv(dirs, "--series", "wrynose"))
    assert clp.bitbake_dir(args) == dirs["bitbake"]
    layers = clp.layers(args, "meta_freescale")
    assert layers[:2] == [(dirs["openembedded-core"] / "meta").resolve(),
                          (dirs["meta-yocto"] / "meta-poky").resolve()]
    assert layers[-1] == dirs["meta-freescale"].resolve()


@pytest.mark.parametrize("machine_files", [("qemuarm64.yml", "wrynose.yml"), ("wrynose-imx8mm.yml",)],
                         ids=":".join)
def test_wrynose_layers_match_the_kas_files(tmp_path, machine_files, monkeypatch):
    """The bblayers.conf of the script and of kas name the same layers of the same repositories."""
    from kas.context import create_global_context
    from kas.includehandler import IncludeHandler
    monkeypatch.setenv("KAS_WORK_DIR", str(tmp_path / "kas-work"))
    create_global_context(argparse.Namespace(no_color=True, update=False, force_checkout=False))
    config, missing = IncludeHandler([str(REPO / "kas" / name) for name in machine_files], use_lock=False).get_config()
    assert missing == []
    from_kas = set()
    for name, repo in config["repos"].items():
        if name == "meta-segway":
            continue
        checkout = repo["url"].rstrip("/").rsplit("/", 1)[1].removesuffix(".git")
        from_kas |= {(checkout, layer) for layer, value in repo.get("layers", {}).items() if value != "disabled"}
    src = tmp_path / "src"
    dirs = checkouts(src, "wrynose", "split")
    args = clp.parse_args(argv(dirs, "--series", "wrynose"))
    bsp = "meta_freescale" if config["machine"] == "imx8mm-lpddr4-evk" else None
    layers = clp.layers(args, bsp)
    assert layers[-1 if not bsp else -2] == REPO / "meta-segway"
    from_script = set()
    for layer in layers:
        if layer != REPO / "meta-segway":
            parts = layer.relative_to(src.resolve()).parts
            from_script.add((parts[0], "/".join(parts[1:]) or "."))
    assert from_script == from_kas


def test_stm32_machines_are_skipped_on_wrynose(tmp_path):
    dirs = checkouts(tmp_path, "wrynose", "split")
    args = clp.parse_args(argv(dirs, "--series", "wrynose", "--workdir", str(tmp_path / "work")))
    for machine in ("stm32mp15-disco", "stm32mp15-eval"):
        ok, detail = clp.parse_machine(args, machine)
        assert ok and detail == "skipped (meta-st-stm32mp has no wrynose branch)"
    assert not (tmp_path / "work").exists(), "no build directory for a skipped machine"


@pytest.mark.parametrize("case, message", [
    ("both-layouts", "give either --poky or --bitbake/--openembedded-core/--meta-yocto, not both"),
    ("no-meta-yocto", "give --poky, or all of --bitbake, --openembedded-core and --meta-yocto"),
    ("wrong-series", "declares series scarthgap, not wrynose (use --series)"),
    ("not-oe-core", "no such file (not an openembedded-core checkout?)"),
    ("missing-dir", "not a directory"),
])
def test_bad_command_line_is_one_error_line(tmp_path, case, message):
    if case == "both-layouts":
        dirs = checkouts(tmp_path, "wrynose", "split")
        dirs["poky"] = dirs["openembedded-core"]
        extra = ["--series", "wrynose"]
    elif case == "no-meta-yocto":
        dirs = checkouts(tmp_path, "wrynose", "split")
        del dirs["meta-yocto"]
        extra = ["--series", "wrynose"]
    elif case == "wrong-series":
        dirs = checkouts(tmp_path, "scarthgap", "poky")
        extra = ["--series", "wrynose"]
    elif case == "not-oe-core":
        dirs = checkouts(tmp_path, "wrynose", "split")
        (dirs["openembedded-core"] / "meta" / "conf" / "layer.conf").unlink()
        extra = ["--series", "wrynose"]
    else:
        dirs = checkouts(tmp_path, "scarthgap", "poky")
        dirs["meta-arm"] = tmp_path / "absent"
        extra = []
    proc = run_script(*argv(dirs, *extra))
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    errors = [line for line in proc.stderr.splitlines() if "error:" in line]
    assert len(errors) == 1 and message in errors[0], proc.stderr


@pytest.mark.skipif(os.geteuid() != 0, reason="checks the refusal to run bitbake as root")
def test_refuses_to_run_as_root(tmp_path):
    dirs = checkouts(tmp_path, "wrynose", "split")
    proc = run_script(*argv(dirs, "--series", "wrynose", "--workdir", str(tmp_path / "work")))
    assert proc.returncode == 2
    assert "bitbake refuses to run as root" in proc.stderr
    assert not (tmp_path / "work").exists()
