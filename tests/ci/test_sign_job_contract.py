"""ci/scripts/sign-release.sh refuses a sign job environment that breaks the contract, before any
PKCS#11 call; a correct one reaches segway-sign."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "ci" / "scripts" / "sign-release.sh"


def secret(path: Path, text: str, mode: int = 0o600) -> str:
    path.write_text(text)
    path.chmod(mode)
    return str(path)


@pytest.fixture
def env(tmp_path):
    (tmp_path / "deploy").mkdir()
    base = {k: v for k, v in os.environ.items() if not k.startswith(("SEGWAY_", "PKCS11_", "P11_KIT"))}
    base.update({
        "PATH": f"{REPO / '.venv' / 'bin'}:{os.environ['PATH']}",
        "SEGWAY_MACHINE": "qemuarm64",
        "SEGWAY_DEPLOY_DIR": str(tmp_path / "deploy"),
        "SEGWAY_RELEASE_DIR": str(tmp_path / "release"),
        "SEGWAY_PKCS11_MODULE": "/usr/lib/x86_64-linux-gnu/libpkcs11-proxy.so",
        "SEGWAY_PIN_FILE": secret(tmp_path / "pin", "123456\n"),
        "PKCS11_PROXY_SOCKET": "tls://hsm.example:2345",
        "PKCS11_PROXY_TLS_PSK_FILE": secret(tmp_path / "psk", "runner-1:" + "ab" * 32 + "\n"),
    })
    return base


def run(env) -> subprocess.CompletedProcess:
    return subprocess.run([str(SCRIPT)], env=env, capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("change,message", [
    (lambda e, t: e.pop("SEGWAY_PIN_FILE"), "SEGWAY_PIN_FILE is not set"),
    (lambda e, t: e.update(SEGWAY_PIN_FILE="123456"), "must name a file (a GitLab variable of type File)"),
    (lambda e, t: e.update(SEGWAY_PIN_FILE=secret(t / "p2", "1234", 0o644)), "readable by others"),
    (lambda e, t: e.update(SEGWAY_PIN_FILE=secret(t / "p3", "")), "empty file"),
    (lambda e, t: e.update(SEGWAY_PIN="123456"), "pass the PIN only as the file variable"),
    (lambda e, t: e.pop("PKCS11_PROXY_SOCKET"), "PKCS11_PROXY_SOCKET is not set"),
    (lambda e, t: e.update(PKCS11_PROXY_SOCKET="tcp://hsm:2345"), "must be tls://host:port"),
    (lambda e, t: e.pop("PKCS11_PROXY_TLS_PSK_FILE"), "PKCS11_PROXY_TLS_PSK_FILE is not set"),
    (lambda e, t: e.update(PKCS11_PROXY_TLS_PSK_FILE=secret(t / "k2", "nocolon\n")), "not one 'identity:hexkey'"),
    (lambda e, t: e.update(PKCS11_PROXY_TLS_PSK_FILE="runner:abcd"), "must name a file"),
    (lambda e, t: e.update(SEGWAY_PKCS11_MODULE="/usr/lib/softhsm/libsofthsm2.so"), "must be libpkcs11-proxy.so"),
    (lambda e, t: e.pop("P11_KIT_SERVER_ADDRESS", None) or e.update(
        SEGWAY_PKCS11_MODULE="/usr/lib/x86_64-linux-gnu/pkcs11/p11-kit-client.so"), "P11_KIT_SERVER_ADDRESS is not set"),
    (lambda e, t: e.update(SEGWAY_MACHINE="nosuchboard"), "no signing plan for machine 'nosuchboard'"),
])
def test_contract_violations_stop_the_job(env, tmp_path, change, message):
    change(env, tmp_path)
    r = run(env)
    assert r.returncode == 2, r.stderr
    assert message in r.stderr and "123456" not in r.stderr + r.stdout
    assert not (tmp_path / "release").exists()


def test_a_correct_environment_reaches_the_token(env, tmp_path):
    """With the contract met, the job runs the qemuarm64 plan up to opening the first key through
    libpkcs11-proxy.so (not installed here), having read the certificates and hashed the inputs."""
    from cryptography.hazmat.primitives.asymmetric import ec
    from tests.signing.release.release_fixtures import self_signed, write_cert

    import yaml

    plan = yaml.safe_load((REPO / "conf" / "signing" / "qemuarm64.yaml").read_text())
    certs = tmp_path / "certs"
    certs.mkdir()
    for spec in plan["keys"].values():  # every key the plan names, the FIP's chain included
        name = spec["cert"].removesuffix(".crt")
        write_cert(certs / spec["cert"], self_signed(ec.generate_private_key(ec.SECP256R1()), name))
    deploy = Path(env["SEGWAY_DEPLOY_DIR"])
    for f in ("segway-image-qemuarm64-secureboot.rootfs.ext4", "segway-fit-qemuarm64-secureboot.itb",
              "fip-qemu.bin"):
        (deploy / f).write_bytes(b"\0" * 8192)
    env["SEGWAY_CERTS_DIR"] = str(certs)
    r = run(env)
    assert r.returncode == 1, r.stderr
    assert r.stderr.strip() == ("segway-sign: error: step 'rootfs-verity': PKCS#11 module "
                                "/usr/lib/x86_64-linux-gnu/libpkcs11-proxy.so does not exist"), r.stderr
    assert not (tmp_path / "release").exists()
