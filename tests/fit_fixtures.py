"""Building blocks for FIT tests: unsigned FITs from Debian's mkimage, keys imported into a token."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from pkcs11 import Attribute
from pkcs11.util.rsa import decode_rsa_private_key, decode_rsa_public_key

from segway_sign.hsm import PinSource, open_session

EPOCH = "1700000000"

ITS = """/dts-v1/;
/ {{
    description = "segway test FIT";
    #address-cells = <1>;
    images {{
        kernel-1 {{ description = "kernel"; data = /incbin/("kernel.bin"); type = "kernel"; arch = "arm64";
                   os = "linux"; compression = "none"; load = <0x40400000>; entry = <0x40400000>;
                   hash-1 {{ algo = "sha256"; }}; }};
        fdt-1 {{ description = "fdt"; data = /incbin/("board.dtb"); type = "flat_dt"; arch = "arm64";
                compression = "none"; hash-1 {{ algo = "sha256"; }}; }};
        ramdisk-1 {{ description = "initramfs"; data = /incbin/("initrd.bin"); type = "ramdisk"; arch = "arm64";
                    os = "linux"; compression = "none"; hash-1 {{ algo = "sha256"; }}; hash-2 {{ algo = "sha1"; }}; }};
    }};
    configurations {{
        default = "conf-1";
        conf-1 {{ description = "boot"; kernel = "kernel-1"; fdt = "fdt-1"; ramdisk = "ramdisk-1";
{signature}        }};
    }};
}};
"""

SIGNATURE_NODE = """            signature-1 {{ algo = "{algo}"; key-name-hint = "{hint}"; {padding}sign-images = {sign_images}; }};
"""


def make_unsigned_fit(workdir: Path, *, signature: bool = True, algo: str = "sha256,rsa2048", hint: str = "dev",
                      padding: str | None = None, sign_images: str = '"kernel", "fdt", "ramdisk"',
                      kernel_size: int = 300_000) -> Path:
    """An unsigned FIT made by Debian's mkimage from random payloads (reproducible timestamp)."""
    workdir.mkdir(parents=True, exist_ok=True)
    for name, size in (("kernel.bin", kernel_size), ("board.dtb", 3000), ("initrd.bin", 70_000)):
        (workdir / name).write_bytes(os.urandom(size))
    sig = SIGNATURE_NODE.format(algo=algo, hint=hint, sign_images=sign_images,
                                padding=f'padding = "{padding}"; ' if padding else "") if signature else ""
    (workdir / "fit.its").write_text(ITS.format(signature=sig))
    out = workdir / "unsigned.itb"
    subprocess.run(["mkimage", "-f", "fit.its", out.name], cwd=workdir, check=True, capture_output=True,
                   env=dict(os.environ, SOURCE_DATE_EPOCH=EPOCH))
    return out


def empty_dtb(path: Path) -> Path:
    subprocess.run(["dtc", "-I", "dts", "-O", "dtb", "-o", str(path), "-"], input=b'/dts-v1/; / { model = "t"; };',
                   check=True, capture_output=True)
    return path


def pem_key_pair(keydir: Path, name: str = "dev", bits: int = 2048) -> rsa.RSAPrivateKey:
    """A software key for mkimage (<dir>/<name>.key + .crt); the test imports the same key into the token."""
    keydir.mkdir(parents=True, exist_ok=True)
    key_path = keydir / f"{name}.key"
    subprocess.run(["openssl", "genpkey", "-algorithm", "RSA", "-pkeyopt", f"rsa_keygen_bits:{bits}",
                    "-out", str(key_path)], check=True, capture_output=True)
    subprocess.run(["openssl", "req", "-batch", "-new", "-x509", "-key", str(key_path), "-out",
                    str(keydir / f"{name}.crt"), "-subj", f"/CN={name}"], check=True, capture_output=True)
    return serialization.load_pem_private_key(key_path.read_bytes(), None)


def import_rsa_key(tok, key: rsa.RSAPrivateKey, label: str) -> str:
    """Put a software RSA key into the token (for byte-comparison tests only); return its URI."""
    der = key.private_bytes(serialization.Encoding.DER, serialization.PrivateFormat.TraditionalOpenSSL,
                            serialization.NoEncryption())
    pub_der = key.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.PKCS1)
    key_id = os.urandom(8)
    tok.activate()
    session = open_session(tok.token_uri, module_path=tok.module, pin=PinSource(file=tok.pin_file))

    def op(s):
        priv = decode_rsa_private_key(der)
        priv.update({Attribute.TOKEN: True, Attribute.LABEL: label, Attribute.ID: key_id, Attribute.SIGN: True,
                     Attribute.SENSITIVE: True, Attribute.EXTRACTABLE: False, Attribute.PRIVATE: True})
        s.create_object(priv)
        pub = decode_rsa_public_key(pub_der)
        pub.update({Attribute.TOKEN: True, Attribute.LABEL: label, Attribute.ID: key_id, Attribute.VERIFY: True})
        s.create_object(pub)
    session.call(op, "importing a test key")
    return f"{tok.token_uri};object={label}"


def mkimage_sign(fit: Path, keydir: Path, control_dtb: Path | None = None, extra: tuple = ()) -> None:
    args = ["mkimage", "-F", "-k", str(keydir), *extra]
    if control_dtb:
        args += ["-K", str(control_dtb), "-r"]
    subprocess.run(args + [str(fit)], check=True, capture_output=True, env=dict(os.environ, SOURCE_DATE_EPOCH=EPOCH))


def tree(blob: bytes) -> dict[str, dict[str, bytes]]:
    """Every node's properties (pylibfdt), for property-by-property comparison."""
    import libfdt
    fdt = libfdt.Fdt(bytearray(blob))
    out: dict[str, dict[str, bytes]] = {}

    def visit(node: int, path: str) -> None:
        props = {}
        prop = fdt.first_property_offset(node, [libfdt.NOTFOUND])
        while prop >= 0:
            p = fdt.get_property_by_offset(prop)
            props[p.name] = bytes(p)
            prop = fdt.next_property_offset(prop, [libfdt.NOTFOUND])
        out[path] = props
        child = fdt.first_subnode(node, [libfdt.NOTFOUND])
        while child >= 0:
            visit(child, path.rstrip("/") + "/" + fdt.get_name(child))
            child = fdt.next_subnode(child, [libfdt.NOTFOUND])

    visit(0, "/")
    return out
