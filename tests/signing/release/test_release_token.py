"""Release runs with keys inside a real token: SoftHSM directly and through p11-kit remoting.

The p11-kit runs go through ci/scripts/sign-release.sh, the sign job's own script, with only the
module swapped (p11-kit-client.so for libpkcs11-proxy.so), so the job's command line, environment
contract and PIN handling are what is tested. Eight runs at once share one remote token.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path


from tests.helpers import SEGWAY_SIGN, run_cli
from tests.signing.release.release_fixtures import make_deploy, plan_doc, token_certs, write_plan

REPO = Path(__file__).resolve().parents[3]
SIGN_SCRIPT = REPO / "ci" / "scripts" / "sign-release.sh"


def ci_env(tok, tmp_path: Path, machine_plan: Path, out: Path) -> dict:
    """What the GitLab sign job provides, pointing at the test's p11-kit server."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SEGWAY_", "PKCS11_", "P11_KIT"))}
    env.update(tok.env)
    env.update({
        "SEGWAY_MACHINE": machine_plan.stem,
        "SEGWAY_DEPLOY_DIR": str(tmp_path / "deploy"),
        "SEGWAY_RELEASE_DIR": str(out),
        "SEGWAY_PKCS11_MODULE": tok.module,
        "SEGWAY_PIN_FILE": str(tok.pin_file),
        "SEGWAY_CERTS_DIR": str(tmp_path / "certs"),
        "SEGWAY_SIGN": SEGWAY_SIGN,
        "PATH": f"{REPO / '.venv' / 'bin'}:{os.environ['PATH']}",
    })
    return env


def script_tree(tmp_path: Path, doc: dict) -> Path:
    """A copy of ci/scripts + conf/signing/<machine>.yaml laid out as in the repository."""
    root = tmp_path / "repo"
    (root / "ci").mkdir(parents=True)
    shutil.copytree(REPO / "ci" / "scripts", root / "ci" / "scripts")
    (root / "conf" / "signing").mkdir(parents=True)
    return write_plan(root / "conf" / "signing" / "testmachine.yaml", doc)


def test_release_cli_through_each_transport(token, tmp_path):
    make_deploy(tmp_path)
    uris = token_certs(token, tmp_path / "certs")
    plan = write_plan(tmp_path / "plan.yaml", plan_doc(uris))
    r = run_cli(["release", "--plan", str(plan), "--deploy-dir", str(tmp_path / "deploy"), "--out",
                 str(tmp_path / "rel"), "--certs", str(tmp_path / "certs"), "--pin-file", str(token.pin_file),
                 "--json"], token)
    assert r.returncode == 0, r.stderr.decode()
    assert json.loads(r.stdout)["status"] == "signed"
    doc = json.loads((tmp_path / "rel" / "manifest.json").read_text())
    assert doc["keys"]["verity"]["uri"].startswith(f"pkcs11:token={token.token_label};")
    assert token.pin not in (tmp_path / "rel" / "manifest.json").read_text()
    v = run_cli(["release", "verify", "--certs", str(tmp_path / "certs"), str(tmp_path / "rel")])
    assert v.returncode == 0 and b"OK" in v.stdout, v.stderr.decode()
    again = run_cli(["release", "--plan", str(plan), "--deploy-dir", str(tmp_path / "deploy"), "--out",
                     str(tmp_path / "rel"), "--certs", str(tmp_path / "certs"), "--pin-file",
                     str(token.pin_file), "--json"], token)
    assert again.returncode == 0 and json.loads(again.stdout)["status"] == "unchanged"


def test_sign_job_script_through_p11kit_as_through_the_proxy(p11kit, tmp_path):
    make_deploy(tmp_path)
    uris = token_certs(p11kit, tmp_path / "certs")
    plan = script_tree(tmp_path, plan_doc(uris))
    script = plan.parents[2] / "ci" / "scripts" / "sign-release.sh"
    env = ci_env(p11kit, tmp_path, plan, tmp_path / "rel")
    r = subprocess.run([str(script)], env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    assert "OK" in r.stdout and p11kit.pin not in r.stdout + r.stderr
    # The same job against the proxy module demands the proxy's half of the contract.
    proxy_env = dict(env, SEGWAY_PKCS11_MODULE="/usr/lib/libpkcs11-proxy.so", SEGWAY_RELEASE_DIR=str(tmp_path / "r2"))
    r = subprocess.run([str(script)], env=proxy_env, capture_output=True, text=True)
    assert r.returncode == 2 and "PKCS11_PROXY_SOCKET is not set" in r.stderr
    assert not (tmp_path / "r2").exists()


def test_eight_concurrent_releases_against_one_remote_token(p11kit, tmp_path):
    make_deploy(tmp_path)
    uris = token_certs(p11kit, tmp_path / "certs")
    plan = script_tree(tmp_path, plan_doc(uris))
    script = plan.parents[2] / "ci" / "scripts" / "sign-release.sh"

    def job(i: int) -> subprocess.CompletedProcess:
        env = ci_env(p11kit, tmp_path, plan, tmp_path / f"rel{i}")
        return subprocess.run([str(script)], env=env, capture_output=True, text=True, timeout=900)

    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(job, range(8)))
    failed = [(i, r.stderr.strip()[-300:]) for i, r in enumerate(results) if r.returncode]
    assert not failed, failed
    roots = {json.loads((tmp_path / f"rel{i}" / "manifest.json").read_text())["steps"][1]["details"]["root_hash"]
             for i in range(8)}
    assert len(roots) == 1  # derived salt: the same tree every time
