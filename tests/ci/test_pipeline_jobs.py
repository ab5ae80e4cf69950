"""The pipeline's jobs run, with gitlab-ci-local's shell executor, as written in .gitlab-ci.yml:

* ``sign:qemuarm64`` signs a deferred-mode deploy dir made here (unsigned kernel FIT, ext4 image)
  with the keys of conf/signing/qemuarm64.yaml in a SoftHSM token reached through p11-kit remoting
  (p11-kit-client.so instead of libpkcs11-proxy.so, as the sign job contract allows), and its
  artifacts pass ``segway-sign release verify``;
* ``test`` runs ci/scripts/run-tests.sh (bootstrap, then pytest) on a smoke subset, with this file's
  tests in it skipped by a guard, so the job never runs itself again.

The p11-kit server is stopped by PID. The Yocto jobs are only listed (test_gitlab_ci.py).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from tests.ci.ci_local import NESTED, REPO, CiCopy
from tests.fit_fixtures import make_unsigned_fit
from tests.helpers import SEGWAY_SIGN, P11KitToken, SoftHsmToken
from tests.signing.release.release_fixtures import self_signed, write_cert
from segway_sign.hsm import devhsm, module

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(bool(os.environ.get(NESTED)),
                                 reason=f"{NESTED} is set: inside a pipeline job run by this file")]

MACHINE = "qemuarm64"
# The keys of conf/signing/qemuarm64.yaml (token segway-dev) and the kind each step signs with.
PLAN_KEYS = {"segway-dev-verity": "rsa2048", "segway-dev-fit": "rsa2048", "segway-dev-release": "p256",
             # TF-A's generic TBBR chain: the ROT key and the keys below it
             **{f"segway-dev-fip{role}": "p256" for role in ("", "-trusted-world", "-non-trusted-world", "-soc-fw",
                                                            "-tos-fw", "-nt-fw")}}
SMOKE = "tests/ci/test_sign_job_contract.py tests/ci/test_pipeline_jobs.py"


@pytest.fixture
def segway_dev(tmp_path):
    """The plan's token, ``segway-dev``, behind its own p11-kit server, with the plan's keys and their
    certificates in ``certs/`` (made through SoftHSM directly, so only the job uses the client)."""
    root = tmp_path / "hsm"
    root.mkdir()
    tok = P11KitToken(root, label="segway-dev")
    try:
        direct = SoftHsmToken.__new__(SoftHsmToken)
        direct.__dict__.update(tok.__dict__, module=devhsm.SOFTHSM_MODULE)
        certs = tmp_path / "certs"
        certs.mkdir()
        for label, kind in PLAN_KEYS.items():
            uri = direct.generate(kind, label)
            write_cert(certs / f"{label}.crt", self_signed(direct.open_key(uri), label))
        module.reset()
        yield tok, certs
    finally:
        module.reset()
        tok.stop()


def deferred_deploy_dir(deploy: Path, work: Path) -> None:
    """What a SEGWAY_SIGN_MODE = "deferred" build of qemuarm64 leaves for the sign job: the rootfs
    image, the unsigned kernel FIT (signature node for segway-dev-fit, initramfs for the verity env)
    and TF-A's FIP without certificates (stand-in images, packed by fiptool)."""
    deploy.mkdir()
    (deploy / f"segway-image-{MACHINE}-secureboot.rootfs.ext4").write_bytes(os.urandom(256 * 4096))
    fit = make_unsigned_fit(work / "fit", hint="segway-dev-fit")
    shutil.copy(fit, deploy / f"segway-fit-{MACHINE}-secureboot.itb")
    images = []
    for name in ("tb-fw", "soc-fw", "tos-fw", "tos-fw-extra1", "nt-fw"):
        (work / f"{name}.bin").write_bytes(os.urandom(4096))
        images += [f"--{name}", str(work / f"{name}.bin")]
    subprocess.run(["fiptool", "create", *images, str(deploy / "fip-qemu.bin")], check=True, capture_output=True)


def test_sign_job_signs_a_deferred_build_through_p11kit(ci, segway_dev, tmp_path):
    tok, certs = segway_dev
    deferred_deploy_dir(ci.root / "deploy", tmp_path)
    job = f"sign:{MACHINE}"
    r = ci.run(job, "--force-shell-executor", variables={
        # A protected branch (the job's rules), and the project directory the shell executor runs in.
        "CI_PIPELINE_SOURCE": "push", "CI_COMMIT_BRANCH": "main", "CI_COMMIT_REF_PROTECTED": "true",
        "CI_PROJECT_DIR": str(ci.root),
        # The runner's side of the contract: module, PIN file variable, the token's address.
        "SEGWAY_PKCS11_MODULE": tok.module, "P11_KIT_SERVER_ADDRESS": tok.env["P11_KIT_SERVER_ADDRESS"],
        "SEGWAY_PIN_FILE": str(tok.pin_file), "SEGWAY_CERTS_DIR": str(certs), NESTED: "1",
    }, timeout=300)
    log = r.stdout + r.stderr
    assert r.returncode == 0, log
    assert f"PASS  {job}" in log and f"{job} $ ci/scripts/sign-release.sh" in log
    assert tok.pin not in log and tok.pin not in (ci.root / ".gitlab-ci-local" / "output").joinpath(
        f"{job.replace(':', 'Og')}.log").read_text()

    release = ci.artifacts(job) / f"release-{MACHINE}"
    manifest = json.loads((release / "manifest.json").read_text())
    assert manifest["machine"] == MACHINE
    assert [s["id"] for s in manifest["steps"]] == ["rootfs-verity", "kernel-fit", "fip"]
    assert all(k["uri"].startswith("pkcs11:token=segway-dev;object=") for k in manifest["keys"].values())
    v = subprocess.run([SEGWAY_SIGN, "release", "verify", "--certs", str(certs), str(release)],
                       capture_output=True, text=True, timeout=300)
    assert v.returncode == 0 and f"{release}: OK" in v.stdout, v.stdout + v.stderr
    # The artifact is the job's release, byte for byte.
    job_release = ci.root / f"release-{MACHINE}"
    assert sorted(p.relative_to(release) for p in release.rglob("*")) == \
        sorted(p.relative_to(job_release) for p in job_release.rglob("*"))
    assert (release / "manifest.json.p7s").read_bytes() == (job_release / "manifest.json.p7s").read_bytes()


@pytest.mark.skipif(os.geteuid() != 0, reason="the test job's scripts/bootstrap runs as root (Debian 12, CI)")
def test_test_job_runs_a_smoke_subset_without_running_itself(tmp_path):
    # The job starts with scripts/bootstrap on the copy, which shares this checkout's .venv: bring
    # it up to date from the checkout first, then copy, so the job's own bootstrap only finds it done.
    boot = subprocess.run([str(REPO / "scripts" / "bootstrap")], capture_output=True, text=True, timeout=1800)
    assert boot.returncode == 0, boot.stderr
    ci = CiCopy(tmp_path / "repo")
    r = ci.run("test", "--force-shell-executor", variables={
        "CI_PIPELINE_SOURCE": "push", "CI_COMMIT_BRANCH": "feature", "CI_PROJECT_DIR": str(ci.root),
        "PYTEST_ADDOPTS": f"-p no:cacheprovider {SMOKE}", NESTED: "1",
    }, timeout=600)
    log = r.stdout + r.stderr
    assert r.returncode == 0, log
    assert "PASS  test" in log and "test $ ci/scripts/run-tests.sh" in log
    assert "bootstrap: preparing" not in log and "bootstrap: installing" not in log, log

    junit = ci.artifacts("test") / "reports" / "junit-tests.xml"
    suite = ET.parse(junit).getroot()
    suite = suite if suite.tag == "testsuite" else suite.find("testsuite")
    assert int(suite.get("failures")) == int(suite.get("errors")) == 0
    cases = {(c.get("classname"), c.get("name")): c for c in suite.iter("testcase")}
    contract = [k for k in cases if k[0].endswith("test_sign_job_contract")]
    assert len(contract) >= 14 and not any(cases[k].find("skipped") is not None for k in contract)
    # The guard: this file's tests were collected in the job and skipped there.
    nested = [c for k, c in cases.items() if k[0].endswith("test_pipeline_jobs")]
    assert len(nested) == 2
    assert all(c.find("skipped") is not None and NESTED in c.find("skipped").get("message", "") for c in nested)
