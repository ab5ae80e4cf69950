"""``pki init``/``export``/``show``: a plan's keys inside the token, their certificates, the public material.

Outputs (one directory, written atomically): ``certs/<label>.pem`` (certificates),
``keys/<label>.pub.pem`` (public keys), ``u-boot/<hint>.dtb`` + ``.dtsi`` (U-Boot public-key nodes for
fit keys), key tables and fuse values (``fuses/``; fuse values only for a complete table),
``chain.pem`` and ``ceremony.json`` (the keys, fingerprints, time). The certificates of the signing
keys and the key tables also go to the certificates directory the signing plans and the Yocto layer
read (``conf/signing/certs/``): ``<label>.crt``, ``<plan>-hab-srk-table.bin``,
``<plan>-ahab-srk-table.bin``. Nothing secret is ever written.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from pkcs11 import Attribute, CertificateType, ObjectClass

from .. import __version__
from ..atomic import output_dir
from ..crypto import parse_certificate, spki_pem
from ..errors import SegwayError, TokenError
from ..reproducible import source_datetime
from ..formats.fit.keys import add_pubkey, algo_for_key
from ..hsm import find_private_key, keygen
from ..hsm.session import TokenSession
from .certs import key_type_name, root_certificate, signing_certificate
from ..raw_ec import RawECPublicKey
from .plan import ISSUED_BY, TABLE_SIZES, KeySpec, Plan

def pem_public_key(public_key) -> bytes:
    if isinstance(public_key, RawECPublicKey):
        return public_key.spki_pem()
    return spki_pem(public_key)


def fingerprint(der: bytes) -> str:
    return hashlib.sha256(der).hexdigest()


def _empty_dtb() -> bytes:
    import libfdt
    fdt = libfdt.Fdt.create_empty_tree(4096)
    return bytes(fdt.as_bytearray())


def uboot_dtsi(dtb: bytes, node_path: str) -> str:
    """The key node as device-tree source, for U-Boot's CONFIG_DEVICE_TREE_INCLUDES."""
    import libfdt
    from ..formats.fit.tree import properties
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
    from ..formats.stm32.fuses import pkh_fuse_words
    words = pkh_fuse_words([public_key], 1)
    (dest / f"{label}.pkh.bin").write_bytes(bytes.fromhex(words["hash"]))
    (dest / f"{label}.otp.json").write_text(json.dumps(words, indent=2) + "\n")
    return [f"fuses/{label}.pkh.bin", f"fuses/{label}.otp.json"]


def _export_stm32_table(public_keys: list, dest: Path) -> list[str]:
    """STM32MP13/MP2 PKHTH: the hash of the table of every stm32 key, in plan order."""
    from ..formats.stm32.fuses import pkh_fuse_words
    words = pkh_fuse_words(public_keys, 2)
    (dest / "stm32-pkhth.bin").write_bytes(bytes.fromhex(words["hash"]))
    (dest / "stm32-pkhth.otp.json").write_text(json.dumps(words, indent=2) + "\n")
    return ["fuses/stm32-pkhth.bin", "fuses/stm32-pkhth.otp.json"]


def irreversible_header(what: str, table_sha256: str) -> str:
    return (f"# IRREVERSIBLE: these commands burn {what} of the complete SRK table (sha256 {table_sha256}) "
            "into one-time fuses; check the value on an open device first")


def _export_hab(public_keys: list, dest: Path) -> tuple[list[str], bool]:
    """HAB4 SRK table of every hab key in plan order. Only a complete table (four SRKs, what the docs
    say to fuse) gets its SRK_HASH fuse file and the U-Boot ``fuse prog`` lines for i.MX8M."""
    from ..formats.hab import srk as hab_srk
    table = hab_srk.srk_table(public_keys, ca=True)
    (dest / "hab-SRK_table.bin").write_bytes(table)
    files = ["fuses/hab-SRK_table.bin"]
    complete = len(public_keys) == TABLE_SIZES["hab"]
    if complete:
        digest = hab_srk.srk_hash(table)
        (dest / "hab-SRK_fuse.bin").write_bytes(hab_srk.fuse_file(digest))
        lines = [irreversible_header("SRK_HASH", hashlib.sha256(table).hexdigest())]
        lines += hab_srk.fuse_prog_lines(hab_srk.hash_fuse_words(digest), "imx8m")
        (dest / "hab-fuse-prog-imx8m.txt").write_text("\n".join(lines) + "\n")
        files += ["fuses/hab-SRK_fuse.bin", "fuses/hab-fuse-prog-imx8m.txt"]
    return files, complete


def _export_ahab(public_keys: list, ca: bool, dest: Path) -> tuple[list[str], bool]:
    """AHAB SRK table of every ahab key in plan order (CA flag when the plan has an SGK); a complete
    table (four SRKs) also gets the ``fuse prog`` lines of each SoC family."""
    from ..formats import ahab
    table = ahab.srk_table(public_keys, ca=ca)
    (dest / "ahab-SRK_table.bin").write_bytes(table)
    files = ["fuses/ahab-SRK_table.bin"]
    complete = len(public_keys) == TABLE_SIZES["ahab"]
    if complete:
        for soc in sorted(ahab.FUSE_LAYOUTS):
            digest = ahab.srk_hash(table, ahab.DEFAULT_FUSE_HASH[soc])
            lines = [irreversible_header(f"the {ahab.DEFAULT_FUSE_HASH[soc]} SRK hash",
                                         hashlib.sha256(table).hexdigest())]
            lines += ahab.fuse_prog_lines(ahab.fuse_words(digest), soc)
            (dest / f"ahab-fuse-prog-{soc}.txt").write_text("\n".join(lines) + "\n")
            files.append(f"fuses/ahab-fuse-prog-{soc}.txt")
    return files, complete


@dataclass
class _Entry:
    spec: KeySpec
    session: TokenSession
    key: object
    cert: x509.Certificate
    created: bool


def _find_key(session: TokenSession, spec: KeySpec):
    """The plan key in the token, or None when no object carries its label."""
    if not keygen.objects_labelled(session, spec.label):
        return None
    return find_private_key(session, session.uri.with_object(label=spec.label))


def _stored_certificate(session: TokenSession, key) -> x509.Certificate | None:
    def op(s):
        return [bytes(c[Attribute.VALUE]) for c in
                s.get_objects({Attribute.CLASS: ObjectClass.CERTIFICATE, Attribute.ID: key.key_id})]
    certs = (parse_certificate(der) for der in session.call(op, f"reading the certificate of {key.label}"))
    return next((cert for cert in certs if cert is not None), None)


def _cert_spki(cert: x509.Certificate) -> bytes:
    """The certificate's SubjectPublicKeyInfo, also for curves cryptography cannot load."""
    from asn1crypto import x509 as asn1_x509
    der = cert.public_bytes(serialization.Encoding.DER)
    return asn1_x509.Certificate.load(der)["tbs_certificate"]["subject_public_key_info"].dump()


def _usable(cert: x509.Certificate | None, key, issuer: x509.Certificate | None) -> bool:
    """A stored certificate is kept if it certifies this key and was issued by the issuer's current certificate."""
    if cert is None or _cert_spki(cert) != key.public_der:
        return False
    if issuer is None:
        return cert.issuer == cert.subject
    try:
        cert.verify_directly_issued_by(issuer)
    except Exception:  # noqa: BLE001 - InvalidSignature, mismatched issuers and key types
        return False
    return True


class Ceremony:
    """A plan against its tokens: which keys exist, creating the missing ones, writing the public material."""

    def __init__(self, plan: Plan, open_session: Callable[[object], TokenSession]):
        self.plan = plan
        self._open = open_session
        self._sessions: dict[str, TokenSession] = {}

    def session_for(self, spec: KeySpec) -> TokenSession:
        uri = self.plan.token_for(spec)
        if str(uri) not in self._sessions:
            self._sessions[str(uri)] = self._open(uri)
        return self._sessions[str(uri)]

    def open_all(self) -> None:
        """Every token the plan names, before anything is created (an offline root token must be there)."""
        for spec in self.plan.specs:
            self.session_for(spec)

    def existing(self) -> dict[str, bool]:
        return {spec.label: bool(keygen.objects_labelled(self.session_for(spec), spec.label))
                for spec in self.plan.specs}

    def show(self) -> dict:
        exists = self.existing()
        keys = []
        for spec in self.plan.specs:
            session = self.session_for(spec)
            entry = {"label": spec.label, "purpose": spec.purpose or "root-ca", "type": spec.kind,
                     "token": session.label, "issuer": spec.issuer or (None if spec is self.plan.root
                                                                       else self.plan.root.label),
                     "exists": exists[spec.label]}
            keys.append(entry)
        return {"plan": self.plan.name, "plan_sha256": self.plan.sha256, "keys": keys,
                "existing": sum(exists.values()), "missing": sum(not v for v in exists.values())}


def _finish_hint(plan_path: str) -> str:
    return (f"'segway-sign pki init --resume {plan_path}' creates the missing keys, "
            f"'segway-sign pki export {plan_path}' writes the public material once all exist")


def run_ceremony(plan: Plan, out: Path, open_session: Callable[[object], TokenSession],
                 replace_keys: bool = False, force: bool = False, log: Callable[[str], None] = print,
                 certs_dir: Path | None = None, mode: str | None = None, plan_path: str = "PLAN.yaml") -> dict:
    """``mode``: ``init`` (create every key; refuse if any exists), ``replace`` (destroy and recreate
    them), ``resume`` (keep the keys that exist, create the others) or ``export`` (create nothing:
    every key must exist). The default is ``replace`` with ``replace_keys``, else ``init``."""
    mode = mode or ("replace" if replace_keys else "init")
    now = source_datetime()
    ceremony = Ceremony(plan, open_session)
    # Refuse before creating anything, so a half-done ceremony never happens by accident: every token
    # is opened, the output can be written, and no key of the plan exists (init) or all do (export).
    ceremony.open_all()
    exists = ceremony.existing()
    have = [label for label, ok in exists.items() if ok]
    missing = [label for label, ok in exists.items() if not ok]
    if mode == "init" and have:
        hint = (f"'segway-sign pki export {plan_path}' writes the public material from them" if not missing
                else _finish_hint(plan_path))
        raise TokenError(f"the token already holds {len(have)} key(s) of this plan ({', '.join(have)}); "
                         f"refusing to overwrite keys: {hint} (--replace-keys destroys and recreates them)")
    if mode == "export" and missing:
        raise TokenError(f"the token lacks key(s) of this plan: {', '.join(missing)}: "
                         f"'segway-sign pki init --resume {plan_path}' creates them")
    out = Path(out)
    if out.exists() and not force:
        raise SegwayError(f"output {out} exists (use --force to replace it)")
    out.parent.mkdir(parents=True, exist_ok=True)

    record = {"plan": plan.name, "plan_sha256": plan.sha256, "time": now.isoformat(),
              "tool": f"segway-sign {__version__}", "keys": []}
    created: list[str] = []
    with output_dir(out, force) as tmp:
        for sub in ("certs", "keys", "u-boot", "fuses"):
            (tmp / sub).mkdir()
        entries: dict[str, _Entry] = {}
        try:
            for spec in plan.specs:
                entries[spec.label] = _make_key(spec, ceremony.session_for(spec), entries, plan, mode, now, log,
                                                created)
        except SegwayError as err:
            if not created:
                raise
            now_there = [label for label, ok in ceremony.existing().items() if ok]
            raise TokenError(f"{err}; the ceremony stopped after creating {', '.join(created)}: the token now "
                             f"holds {', '.join(now_there)} of this plan; {_finish_hint(plan_path)}") from None
        record["keys"] = _write_public(plan, list(entries.values()), tmp, record)
    if certs_dir is not None:
        record["certs_dir"] = str(certs_dir)
        record["certs_dir_files"] = export_certs(plan, out, Path(certs_dir), record)
    return record


def _make_key(spec: KeySpec, session: TokenSession, entries: dict[str, _Entry], plan: Plan, mode: str, now,
              log: Callable[[str], None], created: list[str]) -> _Entry:
    is_root = spec is plan.root
    issuer = None if is_root else entries[spec.issuer or plan.root.label]
    what = "root" if is_root else f"{spec.purpose}"
    key = None if mode == "replace" else _find_key(session, spec)
    if key is None:
        log(f"creating {what} key '{spec.label}' ({spec.kind}) in token '{session.label}'")
        key = keygen.generate(session, spec.kind, spec.label, replace=mode == "replace")
        created.append(spec.label)
        was_created = True
    else:
        log(f"using {what} key '{spec.label}' in token '{session.label}'")
        was_created = False
    cert = None if was_created else _stored_certificate(session, key)
    if not _usable(cert, key, None if issuer is None else issuer.cert):
        # (export too: a key whose certificate was never stored is certified now)
        if is_root:
            cert = root_certificate(spec, key, now)
        else:
            cert = signing_certificate(spec, key.public_key(), issuer.cert, issuer.key, now)
            cert.verify_directly_issued_by(issuer.cert)
        _store_certificate(session, key, cert)
    return _Entry(spec, session, key, cert, was_created)


def _write_public(plan: Plan, entries: list[_Entry], tmp: Path, record: dict) -> list[dict]:
    chain, keys = [], []
    for e in entries:
        spec, session, key, cert = e.spec, e.session, e.key, e.cert
        cert_pem = cert.public_bytes(serialization.Encoding.PEM)
        pub_pem = pem_public_key(key.public_key())
        (tmp / "certs" / f"{spec.label}.pem").write_bytes(cert_pem)
        (tmp / "keys" / f"{spec.label}.pub.pem").write_bytes(pub_pem)
        chain.append(cert_pem)
        entry = {
            "label": spec.label, "purpose": spec.purpose or "root-ca", "type": key_type_name(key.public_key()),
            "uri": str(key.uri), "token": session.label, "key_id": key.key_id.hex(),
            "issuer": spec.issuer or (None if spec is plan.root else plan.root.label),
            "created": e.created,
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
        if spec.purpose == "fip":
            # TF-A's ROTPK_HASH (PLAT=qemu, Arm platforms): SHA-256 of the DER SubjectPublicKeyInfo.
            (tmp / "fuses" / f"{spec.label}.rotpk_hash.bin").write_bytes(hashlib.sha256(key.public_der).digest())
            entry["exports"].append(f"fuses/{spec.label}.rotpk_hash.bin")
        if spec.purpose == "optee-ta":
            # OP-TEE's TA_PUBLIC_KEY (pem_to_pub_c.py reads a PEM public key): the key tee.bin checks TAs with
            entry["exports"].append(f"keys/{spec.label}.pub.pem")
        keys.append(entry)

    def of(purpose):
        return [e for e in entries if e.spec.purpose == purpose]
    stm32 = of("stm32")
    if 1 < len(stm32) <= TABLE_SIZES["stm32"]:
        record["stm32_key_table"] = {"keys": [e.spec.label for e in stm32],
                                     "exports": _export_stm32_table([e.key.public_key() for e in stm32],
                                                                    tmp / "fuses")}
    hab = of("hab")
    if hab:
        files, complete = _export_hab([e.key.public_key() for e in hab], tmp / "fuses")
        record["hab_srk"] = {"keys": [e.spec.label for e in hab], "complete": complete, "exports": files}
        if not complete:
            record["hab_srk"]["note"] = (f"{len(hab)} of {TABLE_SIZES['hab']} SRKs: no fuse values for a "
                                         "table that is not final")
    ahab = of("ahab")
    if ahab:
        files, complete = _export_ahab([e.key.public_key() for e in ahab], bool(of("ahab-sgk")), tmp / "fuses")
        record["ahab_srk"] = {"keys": [e.spec.label for e in ahab], "complete": complete, "exports": files}
        if not complete:
            record["ahab_srk"]["note"] = (f"{len(ahab)} of {TABLE_SIZES['ahab']} SRKs: no fuse values for a "
                                          "table that is not final")
    (tmp / "chain.pem").write_bytes(b"".join(chain))
    record["keys"] = keys
    (tmp / "ceremony.json").write_text(json.dumps(record, indent=2) + "\n")
    return keys


def certs_dir_names(plan: Plan) -> dict[str, str]:
    """File in the ceremony output -> name in the certificates directory (what the signing plans and
    the Yocto layer read)."""
    names = {f"certs/{k.label}.pem": f"{k.label}.crt" for k in plan.keys}
    if plan.of("hab"):
        names["fuses/hab-SRK_table.bin"] = f"{plan.name}-hab-srk-table.bin"
    if plan.of("ahab"):
        names["fuses/ahab-SRK_table.bin"] = f"{plan.name}-ahab-srk-table.bin"
    return names


def export_certs(plan: Plan, out: Path, certs_dir: Path, record: dict | None = None) -> list[str]:
    """Copy the signing certificates (``<label>.crt``) and key tables into ``certs_dir``."""
    from ..atomic import write_file
    certs_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for src, name in certs_dir_names(plan).items():
        write_file(certs_dir / name, (out / src).read_bytes(), force=True)
        written.append(name)
    return written
