"""HABv4 Command Sequence File (CSF): build, sign, parse and verify.

The binary matches what NXP CST writes for the classic PKI (CSF key and image key certificates under
an SRK): header, Install SRK, Install CSFK, Authenticate CSF, optional Unlock, Install Key, Authenticate
Data, then the SRK table, certificates and CMS signatures appended in that order, each 4-byte aligned
and referenced by offsets from the CSF start; also fast authentication (``[Install NOCAK]``). With RSA
keys the bytes equal CST's (tests compare them); with ECDSA keys the CSF signature is the last blob.
Everything is big-endian (HAB4 API RM §4.3, §6).
"""

from __future__ import annotations

import datetime
import struct
from dataclasses import dataclass, field
from typing import Sequence

from asn1crypto import x509 as asn1_x509
from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa

from ...crypto import parse_certificate
from ...errors import InputError, UsageError, VerificationError
from . import cms as hab_cms
from . import srk as hab_srk

TAG_CSF = 0xD4
TAG_CRT = 0xD7
TAG_SIG = 0xD8
CMD_INSTALL_KEY = 0xBE
CMD_AUTHENTICATE = 0xCA
CMD_UNLOCK = 0xB2
PCL_SRK = 0x03
PCL_X509 = 0x09
PCL_CMS = 0xC5
ALG_ANY = 0x00
ALG_SHA256 = 0x17
INS_KEY_CSF = 0x02  # flag on the command installing the CSF key
IDX_SRK, IDX_CSFK, IDX_IMG = 0, 1, 2
ENGINES = {"any": 0x00, "caam": 0x1D, "dcp": 0x1B, "sw": 0xFF}
CAAM_UNLOCK_MID = 0x01  # leave the job-ring master IDs unlocked (i.MX8M: needed by OP-TEE/Linux)
CAAM_UNLOCK_RNG = 0x02  # leave RNG state handle 0 to the OS (CST adds this whenever Engine = CAAM)
ENG_CAAM = ENGINES["caam"]
MAX_CSF_SIZE = 0x2000  # U-Boot CONFIG_CSF_SIZE


@dataclass(frozen=True)
class Block:
    """One range HAB hashes: load ``address``, ``offset`` in the image file, ``length``."""

    address: int
    offset: int
    length: int


@dataclass
class CsfSpec:
    """What a CSF authenticates and with which keys.

    ``nocak`` is fast authentication (CST ``[Install NOCAK]``): a non-CA SRK signs both the CSF and the
    data; ``csf_cert`` is then the SRK's own certificate and ``img_cert`` is not used.
    """

    srk_table: bytes
    srk_index: int  # 0-based (CST "Source index")
    csf_cert: x509.Certificate
    img_cert: x509.Certificate | None
    blocks: Sequence[Block]
    version: int = 0x42  # header "Version = 4.2" → 0x42; 0x45 for ECDSA on HAB 4.5
    engine: int = ENG_CAAM
    unlock_mid: bool = False
    unlock_rng: bool | None = None  # None = as CST: when engine is CAAM
    nocak: bool = False


def parse_version(text: str) -> int:
    """CST ``[Header] Version`` ("4.0" … "4.5") → the header byte."""
    try:
        major, minor = (int(x) for x in text.split("."))
    except ValueError:
        raise UsageError(f"HAB version {text!r} is not of the form 4.N") from None
    if major != 4 or not 0 <= minor <= 5:
        raise UsageError(f"HAB version {text} is not supported (4.0 to 4.5)")
    return 0x40 | minor


def _hdr(tag: int, length: int, par: int) -> bytes:
    return struct.pack(">BHB", tag, length, par)


def _install_key(flags: int, pcl: int, alg: int, src: int, tgt: int, key_dat: int) -> bytes:
    return _hdr(CMD_INSTALL_KEY, 12, flags) + struct.pack(">BBBBI", pcl, alg, src, tgt, key_dat)


def _authenticate(key: int, engine: int, aut_start: int, blocks: Sequence[Block] = ()) -> bytes:
    body = struct.pack(">BBBBI", key, PCL_CMS, engine, 0, aut_start)
    body += b"".join(struct.pack(">II", b.address, b.length) for b in blocks)
    return _hdr(CMD_AUTHENTICATE, 4 + len(body), 0) + body


def _unlock(engine: int, features: int) -> bytes:
    return _hdr(CMD_UNLOCK, 8, engine) + struct.pack(">I", features)


def _align4(n: int) -> int:
    return (n + 3) & ~3


def _cert_blob(cert: x509.Certificate, version: int) -> bytes:
    der = cert.public_bytes(serialization.Encoding.DER)
    return _hdr(TAG_CRT, 4 + len(der), version) + der


def block_data(image: bytes, blocks: Sequence[Block]) -> bytes:
    """The bytes HAB hashes for ``blocks`` (concatenated in order)."""
    out = []
    for b in blocks:
        if b.length <= 0 or b.offset < 0 or b.offset + b.length > len(image):
            raise InputError(f"block 0x{b.address:x} 0x{b.offset:x} 0x{b.length:x} lies outside the image "
                             f"({len(image)} bytes)")
        out.append(image[b.offset : b.offset + b.length])
    return b"".join(out)


def build_csf(spec: CsfSpec, csf_key, img_key, image: bytes,
              signing_time: datetime.datetime) -> bytes:
    """Build and sign a CSF for ``blocks`` of ``image``; every signature is verified before return."""
    entries = hab_srk.parse_srk_table(spec.srk_table)
    if not 0 <= spec.srk_index < len(entries):
        raise UsageError(f"SRK index {spec.srk_index + 1} is not in the table ({len(entries)} keys)")
    if not spec.blocks:
        raise UsageError("no blocks to authenticate")
    srk_public = hab_srk.entry_public_key(entries[spec.srk_index].raw)
    if spec.nocak:
        if entries[spec.srk_index].ca:
            raise UsageError("fast authentication needs SRKs without the CA flag (hab srk --no-ca)")
        if spec.csf_cert.public_key().public_numbers() != srk_public.public_numbers():
            raise UsageError(f"the certificate is not SRK {spec.srk_index + 1}'s")
        img_cert, img_key = spec.csf_cert, csf_key
    else:
        if spec.img_cert is None:
            raise UsageError("an image key certificate is needed (or fast authentication)")
        for name, cert in (("CSF", spec.csf_cert), ("IMG", spec.img_cert)):
            check_issued_by(cert, srk_public, f"{name} certificate")
        img_cert = spec.img_cert
    unlock_rng = spec.engine == ENG_CAAM if spec.unlock_rng is None else spec.unlock_rng
    data = block_data(image, spec.blocks)

    # Command sizes are fixed, so the blobs can be laid out before the CSF is signed. The image data
    # is signed first, so its signature's size is known. The CSF signature's size must be known too:
    # RSA signatures have a fixed length, and then the blobs follow CST's order (byte-identical CSFs);
    # an ECDSA DER signature varies by a byte or two, so it goes last, keeping the blobs contiguous
    # (csf_parser walks them in sequence; HAB itself follows the offsets).
    # Fast authentication has no Install CSFK / Install Key commands; CST still appends the SRK
    # certificate (the CMS signer is named by its issuer and serial).
    install_cmds = 1 if spec.nocak else 3
    n_cmds = 4 + 12 * install_cmds + 12 + (8 if spec.unlock_mid else 0) + (12 + 8 * len(spec.blocks))
    n_cmds += 8 if unlock_rng else 0
    dat_sig = hab_cms.sign_detached(data, img_key, img_cert, signing_time)
    blobs = {
        "srk": spec.srk_table,
        "csfk": _cert_blob(spec.csf_cert, spec.version),
        "img": _cert_blob(img_cert, spec.version),
        "dat_sig": _hdr(TAG_SIG, 4 + len(dat_sig), spec.version) + dat_sig,
    }
    csf_sig_fixed = isinstance(spec.csf_cert.public_key(), rsa.RSAPublicKey)
    csf_sig_len = 4 + hab_cms.max_size(spec.csf_cert, signing_time)
    order = ["srk", "csfk", "csf_sig", "img", "dat_sig"] if csf_sig_fixed else \
        ["srk", "csfk", "img", "dat_sig", "csf_sig"]
    if spec.nocak:
        order.remove("img")
    offsets, pos = {}, n_cmds
    for name in order:
        offsets[name] = pos
        pos = _align4(pos + (csf_sig_len if name == "csf_sig" else len(blobs[name])))
    if pos > MAX_CSF_SIZE:
        raise UsageError(f"the CSF would take {pos} bytes, more than the {MAX_CSF_SIZE} HAB reserves")

    cmds = [_install_key(0, PCL_SRK, ALG_SHA256, spec.srk_index, IDX_SRK, offsets["srk"])]
    if not spec.nocak:
        cmds.append(_install_key(INS_KEY_CSF, PCL_X509, ALG_ANY, IDX_SRK, IDX_CSFK, offsets["csfk"]))
    cmds.append(_authenticate(IDX_CSFK, spec.engine, offsets["csf_sig"]))
    if spec.unlock_mid:
        cmds.append(_unlock(ENG_CAAM, CAAM_UNLOCK_MID))
    if spec.nocak:
        cmds.append(_authenticate(IDX_SRK, spec.engine, offsets["dat_sig"], spec.blocks))
    else:
        cmds.append(_install_key(0, PCL_X509, ALG_ANY, IDX_SRK, IDX_IMG, offsets["img"]))
        cmds.append(_authenticate(IDX_IMG, spec.engine, offsets["dat_sig"], spec.blocks))
    if unlock_rng:
        cmds.append(_unlock(ENG_CAAM, CAAM_UNLOCK_RNG))
    body = b"".join(cmds)
    header_and_cmds = _hdr(TAG_CSF, 4 + len(body), spec.version) + body
    assert len(header_and_cmds) == n_cmds

    csf_sig = hab_cms.sign_detached(header_and_cmds, csf_key, spec.csf_cert, signing_time)
    blobs["csf_sig"] = _hdr(TAG_SIG, 4 + len(csf_sig), spec.version) + csf_sig
    if csf_sig_fixed and len(blobs["csf_sig"]) != csf_sig_len:
        raise VerificationError("the CSF signature does not have the length an RSA key gives")
    out = bytearray(header_and_cmds)
    for name in order:
        out.extend(bytes(offsets[name] - len(out)))
        out.extend(blobs[name])
    out.extend(bytes(_align4(len(out)) - len(out)))  # CST ends the CSF 4-byte aligned
    return bytes(out)


def check_issued_by(cert: x509.Certificate, issuer_public, what: str) -> None:
    """HAB checks a CSF/IMG certificate's signature with the SRK; do the same before signing."""
    try:
        if isinstance(issuer_public, rsa.RSAPublicKey):
            issuer_public.verify(cert.signature, cert.tbs_certificate_bytes, padding.PKCS1v15(),
                                 cert.signature_hash_algorithm)
        elif isinstance(issuer_public, ec.EllipticCurvePublicKey):
            issuer_public.verify(cert.signature, cert.tbs_certificate_bytes,
                                 ec.ECDSA(cert.signature_hash_algorithm))
        else:
            raise VerificationError(f"{what}: unsupported issuer key")
    except (InvalidSignature, TypeError, ValueError):
        raise VerificationError(f"{what} {cert.subject.rfc4514_string()} is not signed by the selected SRK") \
            from None


# ---------------------------------------------------------------- parsing and verification


@dataclass
class Command:
    tag: int
    par: int
    raw: bytes


@dataclass
class ParsedCsf:
    version: int
    header_len: int
    commands: list[Command] = field(default_factory=list)


def parse_csf(csf: bytes) -> ParsedCsf:
    if len(csf) < 4 or csf[0] != TAG_CSF:
        raise InputError("not a HAB CSF (tag 0xD4 missing)")
    (length,) = struct.unpack_from(">H", csf, 1)
    if length < 4 or length > len(csf):
        raise InputError("CSF header length is out of range")
    parsed = ParsedCsf(csf[3], length)
    off = 4
    while off < length:
        if off + 4 > length:
            raise InputError(f"truncated CSF command at offset {off}")
        tag, clen, par = struct.unpack_from(">BHB", csf, off)
        if clen < 4 or off + clen > length:
            raise InputError(f"CSF command 0x{tag:02x} at offset {off} has a bad length")
        parsed.commands.append(Command(tag, par, csf[off : off + clen]))
        off += clen
    return parsed


def _blob(csf: bytes, offset: int, tag: int, version: int | None = None) -> bytes:
    if offset + 4 > len(csf) or csf[offset] != tag:
        raise InputError(f"CSF: no 0x{tag:02x} blob at offset 0x{offset:x}")
    (length,) = struct.unpack_from(">H", csf, offset + 1)
    if length < 4 or offset + length > len(csf):
        raise InputError(f"CSF: blob at 0x{offset:x} overruns the CSF")
    if version is not None and csf[offset + 3] != version:
        raise VerificationError(f"CSF: blob at 0x{offset:x} has version 0x{csf[offset + 3]:02x}, the CSF "
                                f"0x{version:02x}")
    return csf[offset + 4 : offset + length]


def _load_certificate(der: bytes, where: int) -> x509.Certificate:
    """A certificate blob's DER, refused when a field outside the signed part is not the canonical one
    (the outer algorithm must repeat the inner one; the signature bit string has no unused bits)."""
    cert = parse_certificate(der)
    try:
        outer = asn1_x509.Certificate.load(der, strict=True)
        inner_alg = outer["tbs_certificate"]["signature"].dump()
        outer_alg = outer["signature_algorithm"].dump()
        unused_bits = outer["signature_value"].contents[:1]
    except (ValueError, KeyError, TypeError):
        cert = None
    if cert is None:
        raise InputError(f"CSF: bad certificate at 0x{where:x}")
    if inner_alg != outer_alg or unused_bits != b"\x00":
        raise VerificationError(f"CSF: the certificate at 0x{where:x} has a non-canonical signature field")
    return cert


def verify_csf(csf: bytes, image: bytes, blocks: Sequence[Block], srk_table: bytes | None = None) -> dict:
    """Replay the CSF the way HAB does (keys, certificates, both CMS signatures); raise on failure.

    The CSF names blocks by load address only, so ``blocks`` gives their file offsets in ``image``;
    their addresses and lengths must be the ones the CSF lists. Returns a summary for reports.
    """
    try:
        return _verify_csf(csf, image, blocks, srk_table)
    except (struct.error, IndexError, ValueError, UnsupportedAlgorithm) as err:
        raise InputError(f"malformed CSF: {' '.join(str(err).split())}") from None


def _check_signature(what: str, sig: bytes, data: bytes, cert) -> None:
    try:
        hab_cms.verify_detached(sig, data, cert)
    except (InputError, VerificationError) as err:
        raise type(err)(f"{what}: {err}") from None


def _verify_csf(csf: bytes, image: bytes, blocks: Sequence[Block], srk_table: bytes | None) -> dict:
    parsed = parse_csf(csf)
    slots: dict[int, object] = {}
    summary: dict = {"blocks": []}
    csf_authenticated = data_authenticated = False
    for cmd in parsed.commands:
        if cmd.tag == CMD_INSTALL_KEY:
            pcl, _alg, src, tgt, key_dat = struct.unpack_from(">BBBBI", cmd.raw, 4)
            if pcl == PCL_SRK:
                if "srk_table" in summary:
                    raise VerificationError("the CSF installs an SRK table twice")
                table = csf[key_dat : key_dat + 4] + _blob(csf, key_dat, TAG_CRT)  # the table is a 0xD7 blob
                if srk_table is not None and table != srk_table:
                    raise VerificationError("the CSF carries a different SRK table")
                entries = hab_srk.parse_srk_table(table)
                if src >= len(entries):
                    raise VerificationError("SRK index outside the table")
                slots[tgt] = hab_srk.entry_public_key(entries[src].raw)
                if not entries[src].ca:  # fast authentication: the SRK also acts as the CSF key
                    slots.setdefault(IDX_CSFK, slots[tgt])
                    summary["fast_authentication"] = True
                summary["srk_index"] = src
                summary["srk_table"] = table
            elif pcl == PCL_X509:
                if src not in slots:
                    raise VerificationError(f"Install Key: verifying slot {src} is empty")
                cert = _load_certificate(_blob(csf, key_dat, TAG_CRT, parsed.version), key_dat)
                check_issued_by(cert, slots[src], f"certificate in slot {tgt}")
                slots[tgt] = cert
        elif cmd.tag == CMD_AUTHENTICATE:
            key, pcl, _eng, _cfg, aut_start = struct.unpack_from(">BBBBI", cmd.raw, 4)
            cert = slots.get(key)
            if cert is None or pcl != PCL_CMS:
                raise VerificationError(f"Authenticate: slot {key} holds no key")
            sig = _blob(csf, aut_start, TAG_SIG, parsed.version)
            rest = cmd.raw[12:]
            if not rest:  # Authenticate CSF
                _check_signature("Authenticate CSF (the CSF commands)", sig, csf[: parsed.header_len], cert)
                csf_authenticated = True
            else:
                if not csf_authenticated:
                    raise VerificationError("the CSF authenticates data before authenticating itself")
                if len(rest) % 8:
                    raise InputError("Authenticate Data: the block list is not address/length pairs")
                listed = [(a, n) for a, n in struct.iter_unpack(">II", rest)]
                if listed != [(b.address, b.length) for b in blocks]:
                    raise VerificationError("the CSF authenticates other blocks than the image layout gives")
                summary["blocks"] = [(b.address, b.offset, b.length) for b in blocks]
                data = block_data(image, blocks)
                _check_signature("Authenticate Data (the image blocks)", sig, data, cert)
                data_authenticated = True
    if "srk_table" not in summary:
        raise VerificationError("the CSF installs no SRK table")
    if not csf_authenticated:
        raise VerificationError("the CSF does not authenticate itself (no Authenticate CSF)")
    if not data_authenticated:
        raise VerificationError("the CSF authenticates no image data (no Authenticate Data)")
    return summary
