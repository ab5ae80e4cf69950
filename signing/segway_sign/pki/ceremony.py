"""``pki init``: create a plan's keys inside the token, certify them, export the public material.

Outputs (one directory, written atomically): ``certs/<label>.pem`` (certificates),
``keys/<label>.pub.pem`` (public keys), ``u-boot/<hint>.dtb`` + ``.dtsi`` (U-Boot public-key nodes for
fit keys), fuse values where a format module provides them (``fuses/``), ``chain.pem`` and
``ceremony.json`` (what was created, fingerprints, time). Nothing secret is ever written.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Callable

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from pkcs11 import Attribute, CertificateType, ObjectClass

from .. import __version__
from ..atomic import output_dir
from ..errors import TokenError
from ..reproducible import source_datetime
from ..formats.fit_keys import add_pubkey, algo_for_key
from ..hsm import keygen
from ..hsm.session import TokenSession
from .certs import key_type_name, root_certificate, signing_certificate
from ..raw_ec import RawECPublicKey
from .plan import KeySpec, Plan

def pem_public_key(public_key) -> bytes:
    if isinstance(public_key, RawECPublicKey):
        return public_key.spki_pem()
    return public_key.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)


def fingerprint(der: bytes) -> str:
    return hashlib.sha256(der).hexdigest()


def _empty_dtb() -> bytes:
    import libfdt
    fdt = libfdt.Fdt.create_empty_tree(4096)
    return bytes(fdt.as_bytearray())


def uboot_dtsi(dtb: bytes, node_path: str) -> str:
    """The key node as device-tree source, for U-Boot's CONFIG_DEVICE_TREE_INCLUDES."""
    import libfdt
    from ..formats.fit_tree import properties
    fdt = libfdt.Fdt(bytearray(dtb))
    lines = ["/ {", "\tsignature {", f"\t\t{node_path.rsplit('/', 1)[1]} {{"]
    for prop, value in reversed(properties(fdt, node_path)):
        if prop in ("key-name-hint", "algo", "required", "ecdsa,curve"):
            lines.append(f'\t\t\t{prop} = "{value.rstrip(bytes(1)).decode()}";')
        else:
            words = " ".join(f"0x{int.from_bytes(value[i:i + 4], 'big'):08x}" for i in range(0, len(value), 4))
            lines.append(f"\t\t\t{prop} = <{words}>;")
    lines += ["\t\t};", "\t};", "};", ""]
    return "\n".join(lines)


def _store_certificate(session: TokenSession, key, cert: x509.Certificate) -> None:
    """Keep the certificate next to its key in the token (found by the same CKA_ID)."""
    der = cert.public_bytes(serialization.Encoding.DER)

    def op(s):
        for old in s.get_objects({Attribute.CLASS: ObjectClass.CERTIFICATE, Attribute.ID: key.key_id}):
            old.destroy()
        s.create_object({Attribute.CLASS: ObjectClass.CERTIFICATE,
                         Attribute.CERTIFICATE_TYPE: CertificateType.X_509,
                         Attribute.TOKEN: True, Attribute.PRIVATE: False, Attribute.LABEL: key.label,
                         Attribute.ID: key.key_id, Attribute.VALUE: der,
                         Attribute.SUBJECT: cert.subject.public_bytes(),
                         Attribute.ISSUER: cert.issuer.public_bytes(),
                         Attribute.SERIAL_NUMBER: cert.serial_number.to_bytes(20, "big").lstrip(b"\0") or b"\0"})
    session.call(op, f"storing the certificate of {key.label}")


def _export_stm32(public_key, label: str, dest: Path) -> list[str]:
    """STM32MP15 PKH: the file U-Boot's ``stm32key`` reads and the OTP words to check it against."""
    from .stm32_fuses import pkh_fuse_words
    words = pkh_fuse_words([public_key], 1)
    (dest / f"{label}.pkh.bin").write_bytes(bytes.fromhex(words["hash"]))
    (dest / f"{label}.otp.json").write_text(json.dumps(words, indent=2) + "\n")
    return [f"fuses/{label}.pkh.bin", f"fuses/{label}.otp.json"]


def _export_stm32_table(public_keys: list, dest: Path) -> list[str]:
    """STM32MP13/MP2 PKHTH: the hash of the table of every stm32 key, in plan order."""
    from .stm32_fuses import pkh_fuse_words
    words = pkh_fuse_words(public_keys, 2)
    (dest / "stm32-pkhth.bin").write_bytes(bytes.fromhex(words["hash"]))
    (dest / "stm32-pkhth.otp.json").write_text(json.dumps(words, indent=2) + "\n")
    return ["fuses/stm32-pkhth.bin", "fuses/stm32-pkhth.otp.json"]


def _export_hab(public_keys: list, dest: Path) -> list[str]:
    """HAB4 SRK table of every hab key in plan order, its SRK_HASH fuse file and the U-Boot
    ``fuse prog`` lines for i.MX8M (burning them is irreversible: check on an open device first)."""
    from ..formats import hab_srk
    table = hab_srk.srk_table(public_keys, ca=True)
    digest = hab_srk.srk_hash(table)
    (dest / "hab-SRK_table.bin").write_bytes(table)
    (dest / "hab-SRK_fuse.bin").write_bytes(hab_srk.fuse_file(digest))
    lines = hab_srk.fuse_prog_lines(hab_srk.hash_fuse_words(digest), "imx8m")
    (dest / "hab-fuse-prog-imx8m.txt").write_text("\n".join(lines) + "\n")
    return ["fuses/hab-SRK_table.bin", "fuses/hab-SRK_fuse.bin", "fuses/hab-fuse-prog-imx8m.txt"]


def run_ceremony(plan: Plan, out: Path, open_session: Callable[[object], TokenSession],
                 replace_keys: bool = False, force: bool = False, log: Callable[[str], None] = print) -> dict:
    now = source_datetime()
    sessions: dict[str, TokenSession] = {}

    def session_for(spec: KeySpec) -> TokenSession:
        uri = plan.token_for(spec)
        if str(uri) not in sessions:
            sessions[str(uri)] = open_session(uri)
        return sessions[str(uri)]

    # Refuse before creating anything, so a half-done ceremony never happens by accident.
    if not replace_keys:
        for spec in [plan.root] + plan.keys:
            if keygen.objects_labelled(session_for(spec), spec.label):
                raise TokenError(f"token already holds objects labelled '{spec.label}': refusing to overwrite "
                                 "keys (use --replace-keys to destroy and recreate them)")

    record = {"plan": plan.name, "plan_sha256": plan.sha256, "time": now.isoformat(),
              "tool": f"segway-sign {__version__}", "keys": []}
    with output_dir(out, force) as tmp:
        for sub in ("certs", "keys", "u-boot", "fuses"):
            (tmp / sub).mkdir()
        root_session = session_for(plan.root)
        log(f"creating root key '{plan.root.label}' ({plan.root.kind}) in token '{root_session.label}'")
        root_key = keygen.generate(root_session, plan.root.kind, plan.root.label, replace=replace_keys)
        root_cert = root_certificate(plan.root, root_key, now)
        _store_certificate(root_session, root_key, root_cert)
        entries = [(plan.root, root_session, root_key, root_cert)]
        for spec in plan.keys:
            session = session_for(spec)
            log(f"creating {spec.purpose} key '{spec.label}' ({spec.kind}) in token '{session.label}'")
            key = keygen.generate(session, spec.kind, spec.label, replace=replace_keys)
            cert = signing_certificate(spec, key.public_key(), root_cert, root_key, now)
            cert.verify_directly_issued_by(root_cert)
            _store_certificate(session, key, cert)
            entries.append((spec, session, key, cert))

        chain = []
        for spec, session, key, cert in entries:
            cert_pem = cert.public_bytes(serialization.Encoding.PEM)
            pub_pem = pem_public_key(key.public_key())
            (tmp / "certs" / f"{spec.label}.pem").write_bytes(cert_pem)
            (tmp / "keys" / f"{spec.label}.pub.pem").write_bytes(pub_pem)
            chain.append(cert_pem)
            entry = {
                "label": spec.label, "purpose": spec.purpose or "root-ca", "type": key_type_name(key.public_key()),
                "uri": str(key.uri), "token": session.label, "key_id": key.key_id.hex(),
                "public_key_sha256": fingerprint(key.public_der),
                "certificate_sha256": fingerprint(cert.public_bytes(serialization.Encoding.DER)),
                "certificate_serial": f"{cert.serial_number:x}",
                "not_before": cert.not_valid_before_utc.isoformat(),
                "not_after": cert.not_valid_after_utc.isoformat(),
                "attributes": keygen.key_attributes(session, key), "exports": [],
            }
            if spec.purpose == "fit":
                algo = algo_for_key(key.public_key())
                dtb = add_pubkey(_empty_dtb(), key.public_key(), spec.key_name_hint, algo, "conf")
                node = f"/signature/key-{spec.key_name_hint}" if algo.split(",")[1].startswith("rsa") \
                    else f"/signature/{spec.key_name_hint}"
                (tmp / "u-boot" / f"{spec.key_name_hint}.dtb").write_bytes(dtb)
                (tmp / "u-boot" / f"{spec.key_name_hint}.dtsi").write_text(uboot_dtsi(dtb, node))
                entry["exports"] += [f"u-boot/{spec.key_name_hint}.dtb", f"u-boot/{spec.key_name_hint}.dtsi"]
                entry["key_name_hint"] = spec.key_name_hint
            if spec.purpose == "stm32":
                entry["exports"] += _export_stm32(key.public_key(), spec.label, tmp / "fuses")
            record["keys"].append(entry)
        stm32_keys = [key.public_key() for spec, _, key, _ in entries if spec.purpose == "stm32"]
        if 1 < len(stm32_keys) <= 8:
            record["stm32_key_table"] = {"keys": [spec.label for spec, *_ in entries if spec.purpose == "stm32"],
                                         "exports": _export_stm32_table(stm32_keys, tmp / "fuses")}
        hab_keys = [key.public_key() for spec, _, key, _ in entries if spec.purpose == "hab"]
        if hab_keys:
            record["hab_srk"] = {"keys": [spec.label for spec, *_ in entries if spec.purpose == "hab"],
                                 "exports": _export_hab(hab_keys, tmp / "fuses")}
        (tmp / "chain.pem").write_bytes(b"".join(chain))
        (tmp / "ceremony.json").write_text(json.dumps(record, indent=2) + "\n")
    return record
