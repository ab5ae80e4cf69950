"""The pipeline under gitlab-ci-local: one throw-away git copy of the checkout per module."""

from __future__ import annotations

import pytest

from tests.ci.ci_local import GITLAB_CI_LOCAL, CiCopy


@pytest.fixture(scope="module")
def ci(tmp_path_factory) -> CiCopy:
    assert GITLAB_CI_LOCAL.exists(), f"{GITLAB_CI_LOCAL} is missing: run scripts/bootstrap"
    return CiCopy(tmp_path_factory.mktemp("pipeline") / "repo")
