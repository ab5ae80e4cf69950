"""Every recipe, append, class, include and conf file of meta-segway parses with bitbake's own parser,
and the Python in it (functions, tasks, anonymous functions, inline ${@...}) compiles."""
from __future__ import annotations

import re
import textwrap

import pytest

from .layer import LAYER, conf_files, evaluate, import_bb, inline_python, metadata_files, statements

ALL_FILES = metadata_files() + conf_files()


def test_layer_has_metadata():
    names = {p.name for p in ALL_FILES}
    for required in ("layer.conf", "segway.conf", "segway-image.bb", "segway_sign.bbclass",
                     "segway-kms_0.1.0.bb", "segway-sign-native_0.1.0.bb"):
        assert required in names


@pytest.mark.parametrize("path", ALL_FILES, ids=lambda p: str(p.relative_to(LAYER)))
def test_parses_with_bitbake(path):
    bb = import_bb()
    group = statements(path)
    assert len(group) > 0, "no statements"
    for node in group:
        if isinstance(node, bb.parse.ast.PythonMethodNode):
            compile("\n".join(node.body), "%s:%s" % (path, node.lineno), "exec")
        elif isinstance(node, bb.parse.ast.MethodNode) and node.python:
            body = "def %s(d):\n%s\n" % (node.func_name or "anonymous",
                                         textwrap.indent("\n".join(node.body) or "pass", "    "))
            compile(body, "%s:%s" % (path, node.lineno), "exec")


@pytest.mark.parametrize("path", ALL_FILES, ids=lambda p: str(p.relative_to(LAYER)))
def test_inline_python_compiles(path):
    for expression in inline_python(path.read_text()):
        compile(expression.replace("\\\n", " "), str(path), "eval")


def test_layer_conf_evaluates():
    layer_conf = LAYER / "conf" / "layer.conf"
    d = evaluate([layer_conf], {"LAYERDIR": str(LAYER), "BBPATH": "", "BBFILES": "", "BBFILES_DYNAMIC": ""})
    assert d.getVar("BBFILE_COLLECTIONS").split() == ["segway"]
    assert d.getVar("LAYERSERIES_COMPAT_segway").split() == ["scarthgap", "wrynose"]
    depends = set(d.getVar("LAYERDEPENDS_segway").split())
    assert {"core", "openembedded-layer", "meta-python", "meta-arm", "tpm-layer"} <= depends
    dynamic = d.getVar("BBFILES_DYNAMIC").split()
    collections = {entry.split(":", 1)[0] for entry in dynamic}
    assert collections == {"stm-st-stm32mp", "freescale-layer", "meta-arm-bsp", "meta-arm"}
    for entry in dynamic:
        pattern = entry.split(":", 1)[1]
        assert pattern.startswith(str(LAYER / "dynamic-layers")), entry
    assert d.getVar("SEGWAY_REPO_DIR") == str(LAYER.parent)


def test_bsp_parts_live_in_dynamic_layers():
    """Nothing outside dynamic-layers/ appends a BSP recipe, so the layer parses with the QEMU set."""
    bsp_recipes = ("stm32mp", "tf-a-", "imx", "fslc", "optee-os-stm32mp")
    for path in metadata_files((".bbappend",)):
        if "dynamic-layers" not in path.parts:
            assert not any(name in path.name for name in bsp_recipes), path


def test_distro_flavours_exist():
    flavours = {p.name for p in (LAYER / "conf" / "distro" / "include").glob("segway-flavour-*.inc")}
    assert flavours == {"segway-flavour-development.inc", "segway-flavour-release.inc"}
    release = evaluate([LAYER / "conf/distro/include/segway-flavour-release.inc"])
    development = evaluate([LAYER / "conf/distro/include/segway-flavour-development.inc"])
    assert release.getVar("SEGWAY_UBOOT_CONSOLE_LOCKED") == "1"
    assert development.getVar("SEGWAY_UBOOT_CONSOLE_LOCKED") == "0"
    assert release.getVar("SEGWAY_SIGN_MODE") == "deferred"


def test_distro_security_settings():
    conf = LAYER / "conf" / "distro"
    d = evaluate([conf / "include" / name for name in
                  ("segway-security-flags.inc", "segway-static-ids.inc", "segway-sbom.inc", "segway-signing.inc")],
                 {"SEGWAY_REPO_DIR": "/repo", "MACHINE": "qemuarm64", "INHERIT": "", "ERROR_QA": "",
                  "SECURITY_CFLAGS": "-fstack-protector-strong", "SECURITY_LDFLAGS": "-Wl,-z,relro,-z,now",
                  "BB_BASEHASH_IGNORE_VARS": "TMPDIR"})
    assert {"create-spdx", "cve-check"} <= set(d.getVar("INHERIT").split())
    assert d.getVar("USERADDEXTENSION") == "useradd-staticids"
    for table in ("USERADD_UID_TABLES", "USERADD_GID_TABLES"):
        assert (LAYER / d.getVar(table)).is_file()
    assert "-fstack-clash-protection" in d.getVar("SECURITY_CFLAGS")
    ignored = set(d.getVar("BB_BASEHASH_IGNORE_VARS").split())
    # Secrets and endpoints must never change a task hash (nor land in sstate signatures).
    assert {"PKCS11_PROXY_SOCKET", "PKCS11_PROXY_TLS_PSK_FILE", "SEGWAY_PIN_FILE",
            "SEGWAY_PKCS11_MODULE", "SEGWAY_PIN"} <= ignored
    cmdline = d.getVar("SEGWAY_KERNEL_CMDLINE").split()
    for option in ("init_on_alloc=1", "init_on_free=1", "module.sig_enforce=1", "lockdown=confidentiality"):
        assert option in cmdline
    text = (conf / "segway.conf").read_text()
    assert 'INIT_MANAGER = "systemd"' in text and "require conf/distro/poky.conf" in text


def test_static_id_tables_are_consistent():
    passwd = [l.split(":") for l in (LAYER / "files/segway-passwd-table").read_text().splitlines()
              if l and not l.startswith("#")]
    groups = [l.split(":") for l in (LAYER / "files/segway-group-table").read_text().splitlines()
              if l and not l.startswith("#")]
    gids = {g[0]: g[2] for g in groups}
    assert len(gids) == len(groups) and len(set(gids.values())) == len(groups), "duplicate group"
    uids = [p[2] for p in passwd]
    assert len(set(uids)) == len(uids), "duplicate uid"
    for entry in passwd:
        assert len(entry) == 7, entry
        assert entry[3] in gids.values(), "primary group of %s not in the group table" % entry[0]
    # Every user and group the layer's own recipes create has a static id.
    bb = import_bb()
    for recipe in metadata_files((".bb",)):
        pn = recipe.name.split("_")[0]
        d = evaluate([recipe], {"PN": pn, "sysconfdir": "/etc"})
        bb.data.expandKeys(d)
        for var, table in (("USERADD_PARAM:" + pn, {p[0] for p in passwd}), ("GROUPADD_PARAM:" + pn, set(gids))):
            for command in (d.getVar(var) or "").split(";"):
                if command.strip():
                    name = command.split()[-1]
                    assert name in table, "%s: %s has no static id" % (recipe.name, name)


def test_kms_recipe_uses_the_repository_conf():
    """segway-kms installs kms/conf/segway-kmsd.service and rewrites profile/state_dir of
    kms/conf/segway-kms.yaml; both files and both keys must exist there."""
    import yaml
    conf = LAYER.parent / "kms" / "conf"
    recipe = (LAYER / "recipes-security/segway-kms/segway-kms_0.1.0.bb").read_text()
    assert "${S}/conf/segway-kmsd.service" in recipe and "${S}/conf/segway-kms.yaml" in recipe
    unit = (conf / "segway-kmsd.service").read_text()
    assert "ExecStart=/usr/bin/segway-kmsd --config /etc/segway-kms/segway-kms.yaml" in unit
    text = (conf / "segway-kms.yaml").read_text()
    assert re.search(r"^profile: ", text, re.M) and re.search(r"^state_dir: ", text, re.M)
    groups = {line.split(":")[0] for line in (LAYER / "files/segway-group-table").read_text().splitlines()
              if line and not line.startswith("#")}
    for listener in yaml.safe_load(text)["listen"]["unix"]:
        assert listener["group"] in groups, listener["group"]
