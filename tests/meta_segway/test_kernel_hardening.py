"""The segway kernel fragments, scored with kernel-hardening-checker (KSPP and CLIP OS
recommendations), and checked for contradictions between fragments.

kernel-hardening-checker is not published on PyPI; install it from its repository
(pip install git+https://github.com/a13xp0p0v/kernel-hardening-checker) to run the scoring tests;
without it they are skipped and the fragment checks still run."""
from __future__ import annotations

import json
import re
import shutil
import subprocess

import pytest

from .layer import LAYER, evaluate

FRAGMENTS = LAYER / "recipes-kernel" / "linux" / "files"
COMMON = ["segway-hardening.cfg", "segway-optee-ftpm.cfg", "segway-dm-verity.cfg", "segway-modsign.cfg"]
ARCHES = {"arm64": COMMON + ["segway-arm64-hardening.cfg"], "arm": COMMON + ["segway-arm-hardening.cfg"]}
# Recommendations the fragments deliberately do not follow.
ACCEPTED = {
    ("CONFIG_MODULES", "is not set"): "BSP drivers are modules; CONFIG_MODULE_SIG_FORCE lets only signed ones load",
    ("CONFIG_LSM", "*selinux*"): "no SELinux policy is shipped; landlock, lockdown and yama are on",
}
# Minimum number of passed checks with only the fragments (no defconfig) as input.
MIN_OK = {"arm64": 250, "arm": 230}
LINE = re.compile(r"^(CONFIG_\w+)=(.*)$|^# (CONFIG_\w+) is not set$")


def read_fragment(name):
    options = {}
    for line in (FRAGMENTS / name).read_text().splitlines():
        m = LINE.match(line.strip())
        if m:
            options[m.group(1) or m.group(3)] = m.group(2) if m.group(1) else "is not set"
    return options


def merged(arch):
    options = {}
    for name in ARCHES[arch]:
        options.update(read_fragment(name))
    return options


@pytest.mark.parametrize("arch", sorted(ARCHES))
def test_fragments_do_not_contradict(arch):
    seen = {}
    for name in ARCHES[arch]:
        for option, value in read_fragment(name).items():
            if option in seen:
                assert seen[option][1] == value, "%s: %s=%s but %s has %s" % (name, option, value, *seen[option])
            seen[option] = (name, value)


def test_security_features_enabled():
    options = merged("arm64")
    required = {
        "CONFIG_TCG_FTPM_TEE": "y", "CONFIG_OPTEE": "y", "CONFIG_DM_VERITY": "y",
        "CONFIG_DM_VERITY_VERIFY_ROOTHASH_SIG": "y", "CONFIG_MODULE_SIG_FORCE": "y",
        "CONFIG_SYSTEM_TRUSTED_KEYS": '"certs/segway-trusted-keys.pem"', "CONFIG_DEVMEM": "is not set",
    }
    for option, value in required.items():
        assert options.get(option) == value, option


def khc():
    return shutil.which("kernel-hardening-checker")


def score(arch, tmp_path):
    config = tmp_path / ("%s.config" % arch)
    lines = ["#", "# Automatically generated file; DO NOT EDIT.", "# Linux/%s 6.6.0 Kernel Configuration" % arch, "#",
             "CONFIG_%s=y" % arch.upper()]
    for option, value in merged(arch).items():
        lines.append("# %s is not set" % option if value == "is not set" else "%s=%s" % (option, value))
    config.write_text("\n".join(lines) + "\n")
    d = evaluate([LAYER / "conf/distro/include/segway-signing.inc"], {"SEGWAY_REPO_DIR": "/repo", "MACHINE": "m",
                                                                       "BB_BASEHASH_IGNORE_VARS": ""})
    cmdline = tmp_path / "cmdline"
    cmdline.write_text(" ".join(d.getVar("SEGWAY_KERNEL_CMDLINE").split()) + " root=PARTLABEL=rootfs-a\n")
    proc = subprocess.run([khc(), "-c", str(config), "-l", str(cmdline), "-m", "json"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


@pytest.mark.skipif(khc() is None, reason="kernel-hardening-checker is not installed (not on PyPI)")
@pytest.mark.parametrize("arch", sorted(ARCHES))
def test_kernel_hardening_checker_score(arch, tmp_path):
    results = score(arch, tmp_path)
    ours = merged(arch)
    contradicted = [r for r in results if not r["check_result_bool"] and r["type"] == "kconfig"
                    and r["option_name"] in ours and (r["option_name"], r["desired_val"]) not in ACCEPTED]
    assert contradicted == [], "fragments go against the recommendations: %s" % contradicted
    ok = sum(1 for r in results if r["check_result_bool"])
    assert ok >= MIN_OK[arch], "only %d checks pass" % ok
