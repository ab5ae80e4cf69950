"""The GitLab pipeline as gitlab-ci-local sees it (GitLab's schema, includes, extends, !reference,
rules): every job's stage, needs, scripts and rules, and signing only on protected refs."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
from pathlib import Path

import pytest

from tests.ci.ci_local import REPO, CiCopy
from segway_sign.release import steps
from segway_sign.release.plan import load_plan

PROXY_PARENT_OF_6646C0B = "6fe5edf288dc03e039f16562c700c0322304d5e1"
IMPLICIT_STAGES = (".pre", ".post")
RESERVED = {"default", "include", "stages", "variables", "workflow", "image", "services", "cache",
            "before_script", "after_script"}


@pytest.fixture(scope="module")
def doc(ci):
    return ci.preview()


@pytest.fixture(scope="module")
def all_jobs(doc):
    return {name: job for name, job in doc.items() if name not in RESERVED and not name.startswith(".")}


def job_vars(doc, job):
    return {**{k: str(v) for k, v in doc.get("variables", {}).items()},
            **{k: str(v) for k, v in job.get("variables", {}).items()}, "CI_PROJECT_DIR": str(REPO)}


def expand(text: str, variables: dict[str, str]) -> str:
    """$VAR / ${VAR} from the job's and the pipeline's variables (script paths, image names)."""
    def sub(m):
        return str(variables.get(m.group(1) or m.group(2), m.group(0)))
    for _ in range(5):
        text = re.sub(r"\$\{(\w+)\}|\$(\w+)", sub, text)
    return text


def needed(job) -> list[str]:
    return [n["job"] if isinstance(n, dict) else n for n in job.get("needs", [])]


def test_pipeline_passes_gitlab_schema_validation(ci):
    r = ci.run("--list")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "json schema validated" in r.stdout + r.stderr


def test_schema_validation_rejects_a_broken_pipeline(tmp_path):
    """The check above is real: a misspelt keyword fails it, naming the job."""
    broken = CiCopy(tmp_path / "repo")
    text = (broken.root / ".gitlab-ci.yml").read_text()
    (broken.root / ".gitlab-ci.yml").write_text(text.replace("test:\n  extends: .test\n",
                                                              "test:\n  extends: .test\n  scirpt: [true]\n"))
    broken.commit("misspelt keyword")
    r = broken.run("--list")
    assert r.returncode != 0
    assert "'scirpt' property is not expected to be here at test" in r.stdout + r.stderr


def test_stages_and_every_job_has_a_known_stage(doc, all_jobs):
    stages = [s for s in doc["stages"] if s not in IMPLICIT_STAGES]
    assert stages == ["test", "build", "sign", "qemu-test", "publish"]
    assert {j["stage"] for j in all_jobs.values()} == set(stages)
    for name, job in all_jobs.items():
        for target in needed(job):
            assert target in all_jobs, f"{name} needs unknown job {target}"
            assert stages.index(all_jobs[target]["stage"]) <= stages.index(job["stage"])


def test_every_script_path_exists_and_is_executable(doc, all_jobs):
    checked = 0
    for name, job in all_jobs.items():
        assert job.get("script"), f"{name} has no script"
        variables = job_vars(doc, job)
        for line in job.get("before_script", []) + job["script"]:
            words = shlex.split(expand(line, variables))
            for word in words:
                if re.match(r"^(ci|scripts)/", word):
                    path = REPO / word
                    assert path.is_file(), f"{name}: {word} does not exist"
                    if word.endswith(".sh") or word == words[0]:
                        assert os.access(path, os.X_OK), f"{name}: {word} is not executable"
                    checked += 1
    assert checked >= len(all_jobs)


def test_shell_scripts_parse():
    for script in sorted((REPO / "ci").rglob("*.sh")):
        r = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True)
        assert r.returncode == 0, f"{script}: {r.stderr}"


def test_each_build_has_a_plan_and_a_sign_job(doc, all_jobs):
    builds = {n.split(":", 1)[1] for n in all_jobs if n.startswith("build:")}
    assert builds == {"qemuarm64", "qemuarm", "stm32mp157", "imx8mm"}
    for machine in builds:
        plan = load_plan(REPO / "conf" / "signing" / f"{machine}.yaml", set(steps.REGISTRY))
        assert plan.machine == machine
        sign = all_jobs[f"sign:{machine}"]
        assert sign["variables"]["SEGWAY_MACHINE"] == machine
        assert f"build:{machine}" in needed(sign)


def test_kas_files_named_by_build_jobs_exist(all_jobs):
    named = 0
    for name, job in all_jobs.items():
        kas_file = job.get("variables", {}).get("SEGWAY_KAS_FILE")
        if kas_file:
            assert (REPO / kas_file).is_file(), f"{name}: {kas_file} does not exist"
            named += 1
    assert named == 6  # four builds, two QEMU tests


def test_kas_fragments_named_by_the_scripts_exist():
    for script in ("kas-build.sh", "qemu-testimage.sh"):
        text = (REPO / "ci" / "scripts" / script).read_text()
        fragments = re.findall(r"\$top/((?:kas|ci/kas)/[\w.-]+\.yml)", text)
        assert fragments, script
        for frag in fragments:
            assert (REPO / frag).is_file(), f"{script}: {frag} does not exist"


def test_build_jobs_use_kas_and_persistent_caches(doc, all_jobs):
    for name, job in all_jobs.items():
        if not name.startswith("build:"):
            continue
        v = job["variables"]
        assert v["DL_DIR"].startswith("/srv/yocto-cache") and v["SSTATE_DIR"].startswith("/srv/yocto-cache")
        assert "deploy/" in job["artifacts"]["paths"]
        assert "kas" in expand(job["image"]["name"], job_vars(doc, job))
    assert "kas build" in (REPO / "ci" / "scripts" / "kas-build.sh").read_text()


# (variables set, predefined variables unset) as GitLab sets them for each kind of pipeline.
PUSH_PROTECTED = ({"CI_PIPELINE_SOURCE": "push", "CI_COMMIT_BRANCH": "main", "CI_COMMIT_REF_PROTECTED": "true"}, ())
TAG_PROTECTED = ({"CI_PIPELINE_SOURCE": "push", "CI_COMMIT_TAG": "v1.0", "CI_COMMIT_REF_PROTECTED": "true"},
                 ("CI_COMMIT_BRANCH",))
PUSH_FEATURE = ({"CI_PIPELINE_SOURCE": "push", "CI_COMMIT_BRANCH": "feature", "CI_COMMIT_REF_PROTECTED": "false"}, ())
TAG_UNPROTECTED = ({"CI_PIPELINE_SOURCE": "push", "CI_COMMIT_TAG": "tmp", "CI_COMMIT_REF_PROTECTED": "false"},
                   ("CI_COMMIT_BRANCH",))
MR_FROM_MAIN = ({"CI_PIPELINE_SOURCE": "merge_request_event", "CI_COMMIT_REF_PROTECTED": "true",
                 "CI_MERGE_REQUEST_SOURCE_BRANCH_NAME": "main"}, ("CI_COMMIT_BRANCH",))
SCHEDULE_FEATURE = ({"CI_PIPELINE_SOURCE": "schedule", "CI_COMMIT_BRANCH": "feature"}, ("CI_COMMIT_REF_PROTECTED",))
YOCTO_JOBS = ("build:", "qemu-test:")


@pytest.mark.parametrize("pipeline,runs", [
    (PUSH_PROTECTED, True), (TAG_PROTECTED, True), (PUSH_FEATURE, False), (TAG_UNPROTECTED, False),
    (MR_FROM_MAIN, False), (SCHEDULE_FEATURE, False),
], ids=["push-protected", "tag-protected", "push-feature", "tag-unprotected", "mr-from-main", "schedule-feature"])
def test_sign_and_publish_run_only_on_protected_branches_and_tags(ci, pipeline, runs):
    variables, unset = pipeline
    listed = ci.list_json(variables, unset)
    guarded = [n for n in listed if n.startswith(("sign:", "publish"))]
    assert len(guarded) == 5
    for name in guarded:
        assert (listed[name]["when"] != "never") is runs, (name, listed[name])
    assert listed["test"]["when"] == "on_success"  # the test job always runs
    # The Yocto jobs are not run here: their rules let them run in every pipeline.
    assert all(job["when"] == "on_success" for name, job in listed.items() if name.startswith(YOCTO_JOBS))


def test_yocto_jobs_are_listed_with_their_needs(ci):
    """Jobs that need a Yocto build are checked for what gitlab-ci-local lists: names and needs."""
    text = ci.ok("--list", variables=PUSH_PROTECTED[0])
    rows = {line.split()[0]: line for line in text.splitlines()[1:] if line.strip()}
    machines = ("qemuarm64", "qemuarm", "stm32mp157", "imx8mm")
    for machine in machines:
        assert f"build:{machine}" in rows and f"sign:{machine}" in rows
        assert f"[build:{machine}]" in rows[f"sign:{machine}"]
    for machine in ("qemuarm64", "qemuarm"):
        assert f"[build:{machine},sign:{machine}]" in rows[f"qemu-test:{machine}"]
    listed = ci.list_json(*PUSH_PROTECTED)
    for machine in ("qemuarm64", "qemuarm"):
        needs = {n["job"]: n["optional"] for n in listed[f"qemu-test:{machine}"]["needs"]}
        # The QEMU test runs on unprotected refs too, where there is no sign job to wait for.
        assert needs == {f"build:{machine}": False, f"sign:{machine}": True}
    publish = {n["job"] for n in listed["publish"]["needs"]}
    assert publish == {"test", *(f"sign:{m}" for m in machines), "qemu-test:qemuarm64", "qemu-test:qemuarm"}


def test_container_images_are_rebuilt_only_when_their_definitions_change(tmp_path):
    repo = CiCopy(tmp_path / "repo")
    assert {n: j["when"] for n, j in repo.list_json(*PUSH_PROTECTED).items() if n.startswith("image:")} == \
        {"image:build": "never", "image:signing": "never"}
    with open(repo.root / "ci" / "containers" / "signing.Containerfile", "a") as f:
        f.write("# changed\n")
    repo.commit("change the signing image")
    changed = repo.list_json(*PUSH_PROTECTED)
    assert changed["image:build"]["when"] == changed["image:signing"]["when"] == "on_success"
    assert repo.list_json(*PUSH_FEATURE)["image:signing"]["when"] == "never"  # protected branches only


def test_sign_jobs_hsm_runner_resource_group_and_proxy_module(doc, all_jobs):
    signs = {n: j for n, j in all_jobs.items() if n.startswith("sign:")}
    assert len(signs) == 4
    assert len({j["resource_group"] for j in signs.values()}) == 1  # one at a time, all machines
    containerfile = (REPO / "ci" / "containers" / "signing.Containerfile").read_text()
    for name, job in signs.items():
        assert job["tags"] == ["hsm"] and job["resource_group"]
        assert job["interruptible"] is False
        module = job["variables"]["SEGWAY_PKCS11_MODULE"]
        assert Path(module).name == "libpkcs11-proxy.so" and module in containerfile
        # Secrets never live in the YAML: they are protected, masked File variables.
        for secret in ("SEGWAY_PIN_FILE", "SEGWAY_PIN", "PKCS11_PROXY_TLS_PSK_FILE", "PKCS11_PROXY_SOCKET"):
            assert secret not in job["variables"] and secret not in doc.get("variables", {})
        assert job["script"] == ["ci/scripts/sign-release.sh"]
        assert "signing" in expand(job["image"]["name"], job_vars(doc, job))


def test_junit_reports_are_collected(all_jobs):
    assert all_jobs["test"]["artifacts"]["reports"]["junit"] == "reports/junit-tests.xml"
    for name in ("qemu-test:qemuarm64", "qemu-test:qemuarm"):
        assert all_jobs[name]["artifacts"]["reports"]["junit"]
    text = (REPO / "ci" / "scripts" / "publish.sh").read_text()
    assert "manifest.json.p7s" in text and "release verify" in text and "reports" in text


def test_signing_image_builds_the_pinned_pkcs11_proxy():
    text = (REPO / "ci" / "containers" / "signing.Containerfile").read_text()
    assert f"PKCS11_PROXY_COMMIT={PROXY_PARENT_OF_6646C0B}" in text
    assert "github.com/tiiuae/pkcs11-proxy" in text
    assert '"PSK-AES128-CBC-SHA:PSK-AES256-CBC-SHA"' in text  # guards the OpenSSL 3 cipher list
    build = (REPO / "ci" / "containers" / "build.Containerfile").read_text()
    m = re.search(r"^FROM ghcr.io/siemens/kas/kas:(\d+)\.(\d+)", build, re.M)
    assert m and (int(m.group(1)), int(m.group(2))) >= (5, 4)


def test_signing_host_unit_has_a_sigkill_fallback():
    unit = (REPO / "ci" / "signing-host" / "pkcs11-daemon@.service").read_text()
    assert re.search(r"^TimeoutStopSec=\d+s$", unit, re.M) and "SendSIGKILL=yes" in unit
    assert "Restart=always" in unit
    doc = (REPO / "ci" / "signing-host" / "README.md").read_text()
    assert PROXY_PARENT_OF_6646C0B in doc and "SIGKILL" in doc and "PSK" in doc
