"""The KMS page's walkthrough (docs/kms.md), run as written against a real swtpm and daemon.

How the blocks are extracted (tests/docs_blocks.py): in docs/kms.md, every fenced shell block whose preceding
non-blank line is the HTML comment ``<!-- runnable -->`` is taken, in document order, and the blocks are joined into one
bash script run with ``set -eo pipefail`` (so a later block sees the variables an earlier one exported, as in a
reader's shell). The only changes made to the text: ``/tmp/kms`` becomes a fresh temporary directory, and
the ports 2321/2322 (swtpm) and 50051 (mTLS) become free ones, so that the test can run next to others.
Blocks marked ``<!-- not runnable: <reason> -->`` are skipped; any other shell block of the page is an
error (each block of the page must say which it is). swtpm and segway-kmsd are stopped by the PIDs they wrote.
"""
from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from tests.docs_blocks import RUNNABLE, Block, runnable_script, shell_blocks

from ..conftest import free_port_pair, require_tools

REPO = Path(__file__).resolve().parents[3]
PAGE = REPO / "docs" / "kms.md"


def kms_section() -> list[Block]:
    return shell_blocks(PAGE)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _stop(pid_file: Path, name: str) -> None:
    """Stop the process whose PID the walkthrough wrote, if it still runs and still is ``name``."""
    try:
        pid = int(pid_file.read_text().strip())
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except (OSError, ValueError):
        return
    if name.encode() in cmdline:
        os.kill(pid, signal.SIGKILL)


def test_blocks_are_marked():
    blocks = kms_section()
    assert sum(b.marker == RUNNABLE for b in blocks) >= 3
    runnable_script(kms_section())  # raises on an unmarked block


@pytest.mark.slow
def test_readme_walkthrough_runs_as_written(tmp_path):
    require_tools("swtpm", "swtpm_setup", "swtpm_localca", "certtool", "openssl")
    root = tmp_path / "kms"
    tpm_port, tcp_port = free_port_pair(), _free_port()
    script = runnable_script(kms_section())
    for literal in ("/tmp/kms", "port=2321", "port=2322", "127.0.0.1:50051"):
        assert literal in script, literal
    script = (script.replace("/tmp/kms", str(root)).replace("port=2321", f"port={tpm_port}")
              .replace("port=2322", f"port={tpm_port + 1}").replace("127.0.0.1:50051", f"127.0.0.1:{tcp_port}"))
    (tmp_path / "walkthrough.sh").write_text(script)
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}:{os.environ['PATH']}")
    for var in ("SEGWAY_KMS_SOCKET", "SEGWAY_KMS_ADDRESS", "SEGWAY_KMS_CA", "SEGWAY_KMS_CERT", "SEGWAY_KMS_KEY",
                "SEGWAY_KMS_SERVER_NAME"):
        env.pop(var, None)
    try:
        r = subprocess.run(["bash", "-c", "set -eo pipefail\n" + script], cwd=tmp_path, env=env,
                           capture_output=True, text=True, timeout=600)
    finally:
        _stop(root / "kmsd.pid", "segway")
        _stop(root / "swtpm.pid", "swtpm")
    log = (root / "kmsd.log").read_text() if (root / "kmsd.log").exists() else ""
    assert r.returncode == 0, f"stdout:\n{r.stdout[-3000:]}\nstderr:\n{r.stderr[-3000:]}\nkmsd:\n{log[-2000:]}"
    out, err = r.stdout, r.stderr
    assert "Traceback" not in out + err + log

    # ca init said what it did
    assert re.search(r"CA initialised: self-signed root CN=Home Gateway CA, key EC secp256r1 .*serial [0-9A-F]+, "
                     r"valid \S+ to \S+; certificate written to " + re.escape(str(root / "ca.pem")), err), err
    # alice's calls went over mTLS as alice (not over the exported admin socket): the daemon refused, by name,
    # what her role forbids, and her listing and signature worked
    assert "PERMISSION_DENIED: alice@example.com may not GenerateKey in 'home' (needs operator)" in err, err
    assert "PERMISSION_DENIED: alice@example.com may not DestroyKey in 'home' (needs admin)" in err, err
    assert out.count("refused: alice is only a user of home") == 2
    assert "refused: alice's certificate is revoked" in out
    assert (root / "fw.sig").stat().st_size > 0
    assert "Verified OK" in out
    # the audit log records her refusals under her principal, and the key she tried to destroy is intact
    entries = [json.loads(line) for line in (root / "audit.jsonl").read_text().splitlines()]
    alice = [e for e in entries if "alice@example.com" in json.dumps(e)]
    assert any("DestroyKey" in json.dumps(e) for e in alice), alice
    listing = [line.split() for line in out.splitlines()]
    assert ["NAME", "ALGORITHM", "STATE", "VERSION", "USAGE"] in listing
    assert ["home/fw", "EC_P256", "ENABLED", "v1", "sign,verify"] in listing
    as_json = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    assert [k["name"] for k in as_json[0]["keys"]] == ["home/fw"]
    # enrolment worked against the swtpm's EK certificate, and the pinned AK verifies the evidence
    assert "AK enrolled" in err and "attestation OK" in out
    assert "audit log OK (anchored in the TPM)" in out
