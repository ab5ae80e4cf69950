"""kas files: each validates against kas's own JSON schema, every include resolves, the composed
configurations are complete, repositories are pinned by commit, and secrets only pass through
the environment."""
from __future__ import annotations

import argparse
import re

import jsonschema
import pytest
import yaml
from kas.configschema import CONFIGSCHEMA
from kas.context import create_global_context
from kas.includehandler import IncludeHandler

from .layer import KAS_DIR, LAYER, REPO

KAS_FILES = sorted(KAS_DIR.glob("*.yml"))
MACHINE_FILES = {"qemuarm64.yml": "qemuarm64-secureboot", "qemuarm.yml": "qemuarm-secureboot",
                 "stm32mp157.yml": "stm32mp15-disco", "imx8mm.yml": "imx8mm-lpddr4-evk"}
FRAGMENTS = ["signing-hsm.yml", "testimage.yml", "release.yml", "ci.yml"]
# Yocto wrynose instead of scarthgap: a fragment for the QEMU machines and a file for the i.MX8M.
WRYNOSE = {("qemuarm64.yml", "wrynose.yml"): "qemuarm64-secureboot",
           ("qemuarm.yml", "wrynose.yml"): "qemuarm-secureboot",
           ("wrynose-imx8mm.yml",): "imx8mm-lpddr4-evk"}
SECRETS = ("PKCS11_PROXY_SOCKET", "PKCS11_PROXY_TLS_PSK_FILE", "SEGWAY_PIN_FILE", "SEGWAY_PKCS11_MODULE",
           "P11_KIT_SERVER_ADDRESS")


def load(name):
    return yaml.safe_load((KAS_DIR / name).read_text())


@pytest.fixture(scope="module", autouse=True)
def kas_context(tmp_path_factory, monkeypatch_module):
    # kas resolves includes relative to the repository of the top file, which it asks git for.
    work = tmp_path_factory.mktemp("kas-work")
    monkeypatch_module.setenv("KAS_WORK_DIR", str(work))
    create_global_context(argparse.Namespace(no_color=True, update=False, force_checkout=False))


@pytest.fixture(scope="module")
def monkeypatch_module():
    with pytest.MonkeyPatch.context() as mp:
        yield mp


def compose(*names):
    handler = IncludeHandler([str(KAS_DIR / n) for n in names], use_lock=False)
    config, missing = handler.get_config()
    return config, missing


def test_expected_files():
    assert {p.name for p in KAS_FILES} == {"base.yml", *MACHINE_FILES, *FRAGMENTS, "wrynose.yml", "wrynose-imx8mm.yml"}


@pytest.mark.parametrize("path", KAS_FILES, ids=lambda p: p.name)
def test_validates_against_kas_schema(path):
    jsonschema.validate(yaml.safe_load(path.read_text()), CONFIGSCHEMA)


@pytest.mark.parametrize("path", KAS_FILES, ids=lambda p: p.name)
def test_includes_resolve(path):
    for include in load(path.name)["header"].get("includes", []):
        assert isinstance(include, str), "only local includes are used"
        assert (REPO / include).is_file(), include


@pytest.mark.parametrize("machine_file", sorted(MACHINE_FILES))
@pytest.mark.parametrize("fragments", [[], FRAGMENTS], ids=["plain", "all-fragments"])
def test_composed_configuration(machine_file, fragments):
    config, missing = compose(machine_file, *fragments)
    assert missing == []
    jsonschema.validate(config, CONFIGSCHEMA)
    assert config["machine"] == MACHINE_FILES[machine_file]
    assert config["distro"] == "segway"
    assert "segway-image" in config["target"]
    repos = config["repos"]
    assert repos["meta-segway"] in (None, {}) or "url" not in repos["meta-segway"]
    assert "meta-segway" in repos["meta-segway"]["layers"]
    for name, repo in repos.items():
        if name == "meta-segway":
            continue
        assert re.fullmatch(r"[0-9a-f]{40}", repo.get("commit", "")), "%s is not pinned by commit" % name
        assert repo["url"].startswith("https://")
    if fragments:
        env = config["env"]
        for secret in SECRETS:
            assert secret in env and env[secret] is None, "%s must pass through with a null value" % secret


@pytest.mark.parametrize("files", sorted(WRYNOSE), ids=":".join)
def test_wrynose_configuration(files):
    """bitbake, openembedded-core and meta-yocto replace poky; every repository is pinned, and
    the layer set is the scarthgap one."""
    config, missing = compose(*files)
    assert missing == []
    jsonschema.validate(config, CONFIGSCHEMA)
    assert config["machine"] == WRYNOSE[files]
    assert config["defaults"]["repos"]["branch"] == "wrynose"
    repos = config["repos"]
    assert repos["poky"]["url"].endswith("/meta-yocto") and repos["poky"]["layers"]["meta"] == "disabled"
    assert repos["bitbake"]["layers"] == {".": "disabled"}
    assert "meta" in repos["openembedded-core"]["layers"]
    for name, repo in repos.items():
        if name != "meta-segway":
            assert re.fullmatch(r"[0-9a-f]{40}", repo.get("commit", "")), "%s is not pinned by commit" % name
    scarthgap, _ = compose(files[0] if files[0] != "wrynose-imx8mm.yml" else "imx8mm.yml")

    def enabled(cfg):
        return {layer for repo in cfg["repos"].values() for layer, value in (repo or {}).get("layers", {}).items()
                if value != "disabled"}
    assert enabled(config) == enabled(scarthgap)


def test_base_layers_satisfy_layerdepends():
    """The kas layer set provides every collection in LAYERDEPENDS_segway."""
    provides = {"meta": "core", "meta-poky": "yocto", "meta-oe": "openembedded-layer", "meta-python": "meta-python",
                "meta-arm": "meta-arm", "meta-arm-toolchain": "arm-toolchain", "meta-tpm": "tpm-layer",
                "meta-segway": "segway"}
    config, _ = compose("qemuarm64.yml")
    layers = {layer for repo in config["repos"].values() for layer in (repo or {}).get("layers", {})}
    collections = {provides[layer] for layer in layers}
    text = (LAYER / "conf" / "layer.conf").read_text()
    depends = re.search(r'LAYERDEPENDS_segway = "([^"]*)"', text, re.S).group(1).replace("\\", " ").split()
    assert set(depends) <= collections


def test_no_secret_in_local_conf():
    for path in KAS_FILES:
        data = load(path.name)
        for snippet in (data.get("local_conf_header") or {}).values():
            for secret in SECRETS + ("PIN", "PSK"):
                for line in snippet.splitlines():
                    assert not re.match(r"\s*%s\s*[?:+.]*=" % secret, line), "%s sets %s in local.conf" % (path.name, secret)


def test_testimage_runs_segway_cases():
    snippet = load("testimage.yml")["local_conf_header"]["30-testimage"]
    suites = re.search(r'TEST_SUITES = "([^"]*)"', snippet).group(1).split()
    cases = {p.stem for p in (LAYER / "lib/oeqa/runtime/cases").glob("*.py")}
    assert {"segway_tee", "segway_kms", "segway_hardening"} <= set(suites)
    assert {s for s in suites if s.startswith("segway")} <= cases


def test_check_script_uses_the_kas_layers():
    """scripts/check-layer-parse builds bblayers.conf from the same layers as kas/base.yml."""
    script = (REPO / "scripts" / "check-layer-parse").read_text()
    config, _ = compose("qemuarm64.yml")
    for repo in config["repos"].values():
        for layer in (repo or {}).get("layers", {}):
            assert '"%s"' % layer in script or "'%s'" % layer in script, layer


@pytest.mark.parametrize("machine_file", sorted(MACHINE_FILES))
def test_machine_names_an_existing_signing_plan(machine_file):
    """Deferred mode deploys conf/signing/<SEGWAY_SIGNING_PLAN_NAME>.yaml for the release job."""
    config, _ = compose(machine_file)
    snippets = "\n".join(config["local_conf_header"].values())
    name = re.search(r'SEGWAY_SIGNING_PLAN_NAME = "([^"]+)"', snippets).group(1)
    plan = REPO / "conf" / "signing" / ("%s.yaml" % name)
    assert plan.is_file(), plan
    data = yaml.safe_load(plan.read_text())
    text = plan.read_text()
    # The plan's inputs are the names this layer deploys.
    assert "segway-fit-%s.itb" % config["machine"] in text
    assert "segway-image-%s.rootfs.ext4" % config["machine"] in text
    assert data["machine"] == name
