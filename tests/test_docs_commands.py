"""Every shell block of README.md and docs/*.md says whether it runs; the runnable ones run as written.

Each fenced shell block is marked ``<!-- runnable -->`` or ``<!-- not runnable: <reason> -->`` on the line
before it (tests/docs_blocks.py); an unmarked block fails ``test_every_shell_block_is_marked``.

``test_page_commands_run_as_written`` runs the runnable blocks of each page that no other test runs
(docs/kms.md: tests/kms/cli/test_readme.py; docs/yocto-layer.md and docs/ceremony.md:
tests/signing/release/test_golden_path.py), in document order as one bash script with ``set -eo pipefail``,
in a throw-away directory that holds a copy of ``conf/`` (without ``conf/signing/certs``), with segway-sign on
``PATH`` and no PKCS#11 variables from the caller's environment. Nothing in the text is changed. What the
directory gets before a page's blocks run, standing in for what a reader has at that point:

- every page but tokens-and-pins.md (which makes its own token): the development key ceremony as
  docs/ceremony.md's runnable block does it (``segway-sign token init-dev`` with ``SEGWAY_DEV_HSM_DIR`` in the
  directory, ``pki init conf/pki-dev.yaml``; ``SOFTHSM2_CONF``/``SEGWAY_PIN_FILE`` exported);
- fit.md: ``fitImage``, an unsigned FIT made by mkimage, and ``u-boot.dtb``, an empty control DTB;
- verity.md: ``rootfs.ext4``, a small ext4 image made by mkfs.ext4;
- optee-ta.md: ``8aaaf200-2450-11e4-abe2-0002a5d5c51b.stripped.elf``, a small aarch64 TA-shaped ELF;
- release.md: ``build/tmp/deploy/images/qemuarm64``, a deferred build's deploy dir made from fixtures under
  the names conf/signing/qemuarm64.yaml gives.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from tests.docs_blocks import REPO, runnable_script, shell_blocks, unmarked
from tests.fit_fixtures import empty_dtb, make_unsigned_fit
from tests.helpers import SEGWAY_SIGN

PAGES = sorted([REPO / "README.md", *(REPO / "docs").glob("*.md")])
RUN_ELSEWHERE = {"docs/kms.md", "docs/yocto-layer.md", "docs/ceremony.md"}
NO_CEREMONY = {"docs/tokens-and-pins.md"}


def _name(page: Path) -> str:
    return str(page.relative_to(REPO))


@pytest.mark.parametrize("page", PAGES, ids=_name)
def test_every_shell_block_is_marked(page):
    bad = unmarked(shell_blocks(page))
    assert not bad, ("mark each shell block '<!-- runnable -->' or '<!-- not runnable: <reason> -->' on the "
                     "line before it: " + "; ".join(map(str, bad)))


def _deploy_dir(root: Path, plan_path: Path) -> None:
    from tests.signing.release.test_golden_path import deploy_dir  # noqa: PLC0415
    made = deploy_dir(yaml.safe_load(plan_path.read_text()), root / "fixtures")
    target = root / "build" / "tmp" / "deploy" / "images" / "qemuarm64"
    target.parent.mkdir(parents=True)
    shutil.move(made, target)
    shutil.rmtree(root / "fixtures")


def _inputs(page: str, root: Path) -> None:
    if page == "docs/fit.md":
        shutil.copy(make_unsigned_fit(root / "fixtures", signature=False), root / "fitImage")
        shutil.rmtree(root / "fixtures")
        empty_dtb(root / "u-boot.dtb")
    elif page == "docs/verity.md":
        subprocess.run(["mkfs.ext4", "-q", "-F", str(root / "rootfs.ext4"), "8M"], check=True, capture_output=True)
    elif page == "docs/optee-ta.md":
        from tests.signing.formats.optee.ta_fixtures import build_ta_elf  # noqa: PLC0415
        shutil.copy(build_ta_elf(root / "fixtures"), root)
        shutil.rmtree(root / "fixtures")
    elif page == "docs/release.md":
        (root / "fixtures").mkdir()
        _deploy_dir(root, root / "conf" / "signing" / "qemuarm64.yaml")


RUN_HERE = [p for p in PAGES if _name(p) not in RUN_ELSEWHERE and any(b.runnable for b in shell_blocks(p))]


@pytest.mark.slow
@pytest.mark.parametrize("page", RUN_HERE, ids=_name)
def test_page_commands_run_as_written(page, tmp_path):
    name = _name(page)
    root = tmp_path / "checkout"
    shutil.copytree(REPO / "conf", root / "conf", ignore=shutil.ignore_patterns("certs"))
    _inputs(name, root)
    prelude = "" if name in NO_CEREMONY else runnable_script(shell_blocks(REPO / "docs" / "ceremony.md"))
    script = "set -eo pipefail\n" + prelude + "\n" + runnable_script(shell_blocks(page))
    env = {k: v for k, v in os.environ.items()
           if k not in ("SOFTHSM2_CONF", "SEGWAY_PIN_FILE", "SEGWAY_PKCS11_MODULE", "P11_KIT_SERVER_ADDRESS",
                        "PKCS11_PROXY_SOCKET")}
    env.update(PATH=f"{Path(SEGWAY_SIGN).parent}:{env['PATH']}", SEGWAY_DEV_HSM_DIR=str(root / ".segway" / "hsm"))
    r = subprocess.run(["bash", "-c", script], cwd=root, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, f"{name}\nstdout:\n{r.stdout[-3000:]}\nstderr:\n{r.stderr[-3000:]}"
    assert "Traceback" not in r.stdout + r.stderr
