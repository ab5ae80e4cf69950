"""TF-A Trusted Board Boot (TBBR) certificates for the STM32MP1 chain of trust.

The certificates match what TF-A's ``cert_create`` writes (``tools/cert_create/src/cert.c``,
``ext.c``, ``tbbr/tbb_cert.c``, ``plat/st/stm32mp1/stm32mp1_tbb_cert.c``): X.509 v3, every
certificate self-signed (issuer = subject), the authenticating key of a child carried as a
SubjectPublicKeyInfo extension of its parent, image hashes as DER DigestInfo, NV counters as
INTEGER, all TBBR extensions critical, 7300 days of validity. The chain is the one in
``fdts/stm32mp1-cot-descriptors.dtsi``.
"""

from __future__ import annotations

import datetime
import hashlib
import secrets
from dataclasses import dataclass

from asn1crypto import algos, core
from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    PublicFormat,
    load_der_public_key,
)
from cryptography.x509.oid import NameOID

from ...crypto import parse_certificate, spki_der
from ...errors import InputError, UsageError, VerificationError
from ...reproducible import source_datetime

_ARM = "1.3.6.1.4.1.4128.2100."
OID = {
    "trusted_nvctr": x509.ObjectIdentifier(_ARM + "1"),
    "non_trusted_nvctr": x509.ObjectIdentifier(_ARM + "2"),
    "hw_config_hash": x509.ObjectIdentifier(_ARM + "203"),
    "fw_config_hash": x509.ObjectIdentifier(_ARM + "204"),
    "trusted_world_pk": x509.ObjectIdentifier(_ARM + "302"),
    "non_trusted_world_pk": x509.ObjectIdentifier(_ARM + "303"),
    "tos_fw_content_pk": x509.ObjectIdentifier(_ARM + "901"),
    "tos_fw_hash": x509.ObjectIdentifier(_ARM + "1001"),
    "tos_fw_extra1_hash": x509.ObjectIdentifier(_ARM + "1002"),
    "tos_fw_extra2_hash": x509.ObjectIdentifier(_ARM + "1003"),
    "tos_fw_config_hash": x509.ObjectIdentifier(_ARM + "1004"),
    "nt_fw_content_pk": x509.ObjectIdentifier(_ARM + "1101"),
    "nt_fw_hash": x509.ObjectIdentifier(_ARM + "1201"),
    "nt_fw_config_hash": x509.ObjectIdentifier(_ARM + "1202"),
}

VALIDITY_DAYS = 7300  # cert_create's VAL_DAYS

# Images a certificate hashes: (extension, FIP image name, required). Optional images that are
# absent get an all-zero hash, as cert_create does.
HASHED_IMAGES = {
    "stm32mp_cfg_cert": [("hw_config_hash", "hw_config", False), ("fw_config_hash", "fw_config", False)],
    "tos_fw_content_cert": [
        ("tos_fw_hash", "tos_fw", True),
        ("tos_fw_extra1_hash", "tos_fw_extra1", False),
        ("tos_fw_extra2_hash", "tos_fw_extra2", False),
        ("tos_fw_config_hash", "tos_fw_config", False),
    ],
    "nt_fw_content_cert": [("nt_fw_hash", "nt_fw", True), ("nt_fw_config_hash", "nt_fw_config", False)],
}
IMAGE_NAMES = [img for specs in HASHED_IMAGES.values() for _, img, _ in specs]


@dataclass(frozen=True)
class CertSpec:
    name: str
    cn: str
    key: str  # role of the key that is both subject key and signer (all certs are self-signed)
    nvctr: str  # "trusted_nvctr" or "non_trusted_nvctr"
    keys_carried: tuple[tuple[str, str], ...] = ()  # (extension, key role)


# In dependency order: a certificate's carried keys authenticate the ones after it.
CHAIN = [
    CertSpec("stm32mp_cfg_cert", "STM32MP config FW Certificate", "rot", "trusted_nvctr"),
    CertSpec(
        "trusted_key_cert",
        "Trusted Key Certificate",
        "rot",
        "trusted_nvctr",
        (("trusted_world_pk", "trusted_world"), ("non_trusted_world_pk", "non_trusted_world")),
    ),
    CertSpec(
        "tos_fw_key_cert",
        "Trusted OS Firmware Key Certificate",
        "trusted_world",
        "trusted_nvctr",
        (("tos_fw_content_pk", "tos_fw_content"),),
    ),
    CertSpec("tos_fw_content_cert", "Trusted OS Firmware Content Certificate", "tos_fw_content", "trusted_nvctr"),
    CertSpec(
        "nt_fw_key_cert",
        "Non-Trusted Firmware Key Certificate",
        "non_trusted_world",
        "non_trusted_nvctr",
        (("nt_fw_content_pk", "nt_fw_content"),),
    ),
    CertSpec("nt_fw_content_cert", "Non-Trusted Firmware Content Certificate", "nt_fw_content", "non_trusted_nvctr"),
]
CERT_NAMES = [spec.name for spec in CHAIN]


# ---------------------------------------------------------------------------------------------
# Extension values


def digest_info(data: bytes) -> bytes:
    """DER DigestInfo {sha256, NULL} over ``data`` (cert_create's ``HASH`` structure)."""
    return digest_info_of(hashlib.sha256(data).digest())


def digest_info_of(digest: bytes) -> bytes:
    return algos.DigestInfo(
        {"digest_algorithm": {"algorithm": "sha256", "parameters": core.Null()}, "digest": digest}
    ).dump()


def nv_counter(value: int) -> bytes:
    return core.Integer(value).dump()




def check_rot_key(public_key) -> None:
    """TF-A's STM32 crypto library accepts only ECDSA P-256 + SHA-256 (stm32mp_crypto_lib.c)."""
    if not isinstance(public_key, ec.EllipticCurvePublicKey) or public_key.curve.name != "secp256r1":
        raise UsageError("the STM32MP1 ROT key must be an ECDSA P-256 key (the BL2 signing key)")


# ---------------------------------------------------------------------------------------------
# Building


def build_certificates(
    images: dict[str, bytes],
    rot_key,
    *,
    tfw_nvctr: int = 0,
    ntfw_nvctr: int = 0,
    not_before: datetime.datetime | None = None,
) -> dict[str, bytes]:
    """Return the six DER certificates of the STM32MP1 chain, by FIP name.

    ``rot_key`` (a cryptography EC P-256 private key, possibly token-backed) signs the
    trusted-key and config certificates; the four other keys are fresh software keys that live
    only for this call (cert_create ``-n``).
    """
    check_rot_key(rot_key.public_key())
    for name, value in (("--tfw-nvctr", tfw_nvctr), ("--ntfw-nvctr", ntfw_nvctr)):
        if not 0 <= value <= 0x7FFFFFFF:
            raise UsageError(f"{name} {value} out of range (0..2147483647)")
    unknown = set(images) - set(IMAGE_NAMES)
    if unknown:
        raise UsageError(f"no certificate hashes image(s) {', '.join(sorted(unknown))}")
    for specs in HASHED_IMAGES.values():
        for _, image, required in specs:
            if required and image not in images:
                raise InputError(f"the chain of trust needs the {image} image, which is missing")

    keys = {"rot": rot_key}
    for role in ("trusted_world", "non_trusted_world", "tos_fw_content", "nt_fw_content"):
        keys[role] = ec.generate_private_key(ec.SECP256R1())
    counters = {"trusted_nvctr": tfw_nvctr, "non_trusted_nvctr": ntfw_nvctr}
    # Reproducible builds fix the time; TF-A does not check the certificates' validity.
    start = not_before or source_datetime()

    certs = {}
    for spec in CHAIN:
        exts: list[tuple[str, bytes]] = [(spec.nvctr, nv_counter(counters[spec.nvctr]))]
        for ext, role in spec.keys_carried:
            exts.append((ext, spki_der(keys[role].public_key())))
        for ext, image, _ in HASHED_IMAGES.get(spec.name, []):
            if image in images:
                exts.append((ext, digest_info(images[image])))
            else:
                exts.append((ext, digest_info_of(bytes(32))))
        certs[spec.name] = _certificate(spec.cn, keys[spec.key], exts, start)
    verify_certificates(certs, images, rot_public_key=rot_key.public_key())
    return certs


def _certificate(cn: str, key, exts: list[tuple[str, bytes]], start: datetime.datetime) -> bytes:
    public_key = key.public_key()
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(public_key)
        .serial_number(secrets.randbits(63) | 1)
        .not_valid_before(start)
        .not_valid_after(start + datetime.timedelta(days=VALIDITY_DAYS))
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(public_key), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=False)
    )
    for ext, value in exts:
        builder = builder.add_extension(x509.UnrecognizedExtension(OID[ext], value), critical=True)
    return builder.sign(key, hashes.SHA256()).public_bytes(Encoding.DER)


# ---------------------------------------------------------------------------------------------
# Verifying (the rules of TF-A's auth module for this chain)


def _load(name: str, der: bytes) -> x509.Certificate:
    cert = parse_certificate(der)
    if cert is None:
        raise VerificationError(f"{name} is not a DER X.509 v1-v3 certificate")
    return cert


def _public_key(cert: x509.Certificate, cert_name: str):
    try:
        return cert.public_key()
    except (ValueError, UnsupportedAlgorithm):
        raise VerificationError(f"{cert_name} holds an invalid or unsupported public key") from None


def _ext(cert: x509.Certificate, cert_name: str, ext: str) -> bytes:
    try:
        found = cert.extensions.get_extension_for_oid(OID[ext])
    except x509.ExtensionNotFound:
        raise VerificationError(f"{cert_name} lacks the {ext} extension ({OID[ext].dotted_string})") from None
    except ValueError as err:
        raise VerificationError(f"{cert_name} has malformed extensions: {' '.join(str(err).split())}") from None
    if not found.critical:
        raise VerificationError(f"{cert_name} extension {ext} is not critical")
    return found.value.value


def _check_signature(cert: x509.Certificate, cert_name: str, public_key) -> None:
    if cert.signature_algorithm_oid != x509.SignatureAlgorithmOID.ECDSA_WITH_SHA256:
        raise VerificationError(f"{cert_name} is not signed with ecdsa-with-SHA256")
    if spki_der(_public_key(cert, cert_name)) != spki_der(public_key):
        raise VerificationError(f"{cert_name} subject key is not the key its parent authorises")
    try:
        public_key.verify(cert.signature, cert.tbs_certificate_bytes, ec.ECDSA(hashes.SHA256()))
    except InvalidSignature:
        raise VerificationError(f"{cert_name} signature does not verify") from None


def _nv_value(der: bytes, cert_name: str) -> int:
    try:
        value = core.Integer.load(der, strict=True).native
    except (ValueError, TypeError):
        raise VerificationError(f"{cert_name} NV counter is not a DER INTEGER") from None
    return value


def _hash_value(der: bytes, cert_name: str, ext: str) -> bytes:
    try:
        info = algos.DigestInfo.load(der, strict=True)
        algorithm = info["digest_algorithm"]["algorithm"].native
        digest = info["digest"].native
    except (ValueError, TypeError, KeyError):
        raise VerificationError(f"{cert_name} {ext} is not a DER DigestInfo") from None
    if algorithm != "sha256" or len(digest) != 32:
        raise VerificationError(f"{cert_name} {ext} is not a SHA-256 DigestInfo")
    return digest


def verify_certificates(
    certs: dict[str, bytes],
    images: dict[str, bytes],
    *,
    rot_public_key=None,
    rot_pkh: bytes | None = None,
) -> dict:
    """Walk the chain from the ROT key; check every signature, carried key and image hash.

    The ROT is given as a public key, as the STM32MP15 PKH (SHA-256 of raw X||Y), or neither
    (then the key in the trusted-key certificate is taken as the root and reported).
    Returns ``{"rot_pkh": hex, "nv_counters": {...}, "images": {name: hex sha256}}``.
    """
    missing = [n for n in CERT_NAMES if n not in certs]
    if missing:
        raise VerificationError(f"missing certificate(s): {', '.join(missing)}")
    parsed = {n: _load(n, certs[n]) for n in CERT_NAMES}
    root = _public_key(parsed["trusted_key_cert"], "trusted_key_cert")
    if rot_public_key is not None and spki_der(root) != spki_der(rot_public_key):
        raise VerificationError("trusted_key_cert is not made for the given ROT key")
    check_rot_key(root)
    raw_xy = root.public_bytes(Encoding.X962, PublicFormat.UncompressedPoint)[1:]
    pkh = hashlib.sha256(raw_xy).digest()
    if rot_pkh is not None and rot_pkh != pkh:
        raise VerificationError(f"ROT key PKH {pkh.hex()} does not match the expected {rot_pkh.hex()}")

    authorised = {"rot": root}
    counters: dict[str, int] = {}
    hashed: dict[str, str] = {}
    for spec in CHAIN:
        cert = parsed[spec.name]
        _check_signature(cert, spec.name, authorised[spec.key])
        value = _nv_value(_ext(cert, spec.name, spec.nvctr), spec.name)
        if counters.setdefault(spec.nvctr, value) != value:
            raise VerificationError(f"{spec.name} carries {spec.nvctr} {value}, other certificates {counters[spec.nvctr]}")
        for ext, role in spec.keys_carried:
            try:
                authorised[role] = load_der_public_key(_ext(cert, spec.name, ext))
            except (ValueError, TypeError, UnsupportedAlgorithm):
                raise VerificationError(f"{spec.name} {ext} is not a supported SubjectPublicKeyInfo") from None
        for ext, image, required in HASHED_IMAGES.get(spec.name, []):
            digest = _hash_value(_ext(cert, spec.name, ext), spec.name, ext)
            if image in images:
                actual = hashlib.sha256(images[image]).digest()
                if digest != actual:
                    raise VerificationError(f"{spec.name} {ext} does not match the {image} image")
                hashed[image] = actual.hex()
            elif required:
                raise VerificationError(f"the {image} image is missing")
            elif digest != bytes(32):
                raise VerificationError(f"{spec.name} hashes a {image} image that is missing")
    return {"rot_pkh": pkh.hex(), "nv_counters": counters, "images": hashed}
