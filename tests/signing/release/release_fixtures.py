"""A tiny deploy dir, a plan over it and certificates for the release tests."""

from __future__ import annotations

import datetime
import os
from pathlib import Path

import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID

KEY_KINDS = {"verity": "rsa", "release": "ec", "fit": "rsa", "stm32-rot": "ec", "fip-rot": "ec"}


def self_signed(key, cn: str) -> x509.Certificate:
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])
    when = datetime.datetime(2026, 1, 1, tzinfo=datetime.timezone.utc)
    return (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(when)
            .not_valid_after(when + datetime.timedelta(days=3650))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))


def write_cert(path: Path, cert: x509.Certificate) -> None:
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))


def make_deploy(root: Path) -> Path:
    deploy = root / "deploy"
    deploy.mkdir()
    (deploy / "rootfs.ext4").write_bytes(os.urandom(300 * 4096))
    (deploy / "disk.wic").write_bytes(os.urandom(64 * 1024))
    (deploy / "disk.wic.bmap").write_text("<bmap version='2.0'/>\n")
    return deploy


def plan_doc(uris: dict[str, str], extra_steps: list | None = None) -> dict:
    return {
        "version": 1,
        "machine": "testmachine",
        "keys": {name: {"uri": uris[name], "cert": f"{name}.pem"} for name in uris},
        "manifest_key": "release",
        "steps": [
            {"id": "disk", "type": "copy", "inputs": {"wic": "disk.wic", "bmap": "disk.wic.bmap"}},
            {"id": "rootfs-verity", "type": "verity", "key": "verity", "inputs": {"image": "rootfs.ext4"},
             "options": {"salt": "derived"}},
        ] + (extra_steps or []),
    }


def write_plan(path: Path, doc: dict) -> Path:
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


class FileKeys:
    """Software keys behind pkcs11: URIs, for library-level runs (open_key is a dict lookup)."""

    def __init__(self, root: Path):
        self.certs = root / "certs"
        self.certs.mkdir()
        self.keys = {}
        self.uris = {}
        for name, kind in KEY_KINDS.items():
            key = rsa.generate_private_key(public_exponent=65537, key_size=2048) if kind == "rsa" \
                else ec.generate_private_key(ec.SECP256R1())
            uri = f"pkcs11:token=files;object={name}"
            self.keys[uri] = key
            self.uris[name] = uri
            write_cert(self.certs / f"{name}.pem", self_signed(key, f"{name} test"))
        self.opened = []

    def open_key(self, uri: str):
        self.opened.append(uri)
        return self.keys[uri]


def token_certs(tok, certs_dir: Path, names=("verity", "release")) -> dict[str, str]:
    """Keys generated inside the token (RSA for verity, P-256 for the manifest) and self-signed
    certificates made with the token keys; returns key name → URI.

    The keys are made through SoftHSM directly even for a p11-kit token (same token directory): the
    test process then never loads p11-kit-client.so itself, so only the CLI under test talks to the
    server, as in CI.
    """
    from tests.helpers import SoftHsmToken
    from segway_sign.hsm import devhsm

    direct = SoftHsmToken.__new__(SoftHsmToken)
    direct.__dict__.update(tok.__dict__, module=devhsm.SOFTHSM_MODULE)
    certs_dir.mkdir(exist_ok=True)
    uris = {}
    for name in names:
        uri = direct.generate("rsa2048" if name == "verity" else "p256", f"{name}-key")
        write_cert(certs_dir / f"{name}.pem", self_signed(direct.open_key(uri), f"{name} token"))
        uris[name] = uri
    return uris
