"""TF-A Trusted Board Boot (TBBR) certificates: STM32MP1's chain of trust and TF-A's generic one.

The certificates match what TF-A's ``cert_create`` writes (``tools/cert_create/src/cert.c``,
``ext.c``, ``tbbr/tbb_cert.c``, ``tbbr/tbb_ext.c``, ``plat/st/stm32mp1/stm32mp1_tbb_cert.c``): X.509
v3, every certificate self-signed (issuer = subject), the authenticating key of a child carried as a
SubjectPublicKeyInfo extension of its parent, image hashes as DER DigestInfo, NV counters as
INTEGER, all TBBR extensions critical, 7300 days of validity.

Two chains of trust, each one list of :class:`CertSpec` (``CHAINS``):

* ``stm32mp1``: ``fdts/stm32mp1-cot-descriptors.dtsi``. Only the ROT key (ECDSA P-256, the BL2
  signing key whose PKH is fused) is a lasting key; the four others are fresh software keys made
  for each signing, as ``cert_create -n`` does.
* ``generic``: what TF-A builds for PLAT=qemu, i.MX8M and the Arm reference platforms with
  ``TRUSTED_BOARD_BOOT=1`` (``drivers/auth/tbbr/tbbr_cot_bl1.c``, ``tbbr_cot_bl2.c``,
  ``tbbr_cot_common.c``). Every key is a lasting key: the ROT key signs ``tb_fw_cert`` (BL2,
  checked by BL1) and ``trusted_key_cert``, which carries the trusted-world and non-trusted-world
  keys; those sign the SoC, trusted-OS and non-trusted firmware key certificates, which carry the
  content keys of BL31, BL32 and BL33. BL1/BL2 compare the SHA-256 of the ROT key's DER
  SubjectPublicKeyInfo with the ROTPK hash built into them (``ROTPK_HASH``). Keys are ECDSA P-256
  or RSA (2048-4096, RSASSA-PSS with SHA-256, MGF1-SHA-256 and a 32-byte salt, as cert_create
  signs), all of one algorithm (TF-A's ``KEY_ALG``); the hash is SHA-256.
"""

from __future__ import annotations

import datetime
import hashlib
import secrets
from dataclasses import dataclass
from typing import Callable

from asn1crypto import algos, core
from asn1crypto import x509 as asn1_x509
from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    PublicFormat,
    load_der_public_key,
)
from cryptography.x509.oid import NameOID

from ...crypto import CertificateError, load_certificate_bytes, spki_der
from ...errors import InputError, UsageError, VerificationError
from ...reproducible import source_datetime

_ARM = "1.3.6.1.4.1.4128.2100."
OID = {
    "trusted_nvctr": x509.ObjectIdentifier(_ARM + "1"),
    "non_trusted_nvctr": x509.ObjectIdentifier(_ARM + "2"),
    "tb_fw_hash": x509.ObjectIdentifier(_ARM + "201"),
    "tb_fw_config_hash": x509.ObjectIdentifier(_ARM + "202"),
    "hw_config_hash": x509.ObjectIdentifier(_ARM + "203"),
    "fw_config_hash": x509.ObjectIdentifier(_ARM + "204"),
    "trusted_world_pk": x509.ObjectIdentifier(_ARM + "302"),
    "non_trusted_world_pk": x509.ObjectIdentifier(_ARM + "303"),
    "soc_fw_content_pk": x509.ObjectIdentifier(_ARM + "501"),
    "soc_fw_hash": x509.ObjectIdentifier(_ARM + "603"),
    "soc_fw_config_hash": x509.ObjectIdentifier(_ARM + "604"),
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
PSS_SALT = 32  # cert_create: RSASSA-PSS, salt length = digest length (SHA-256)


@dataclass(frozen=True)
class CertSpec:
    name: str
    cn: str
    key: str  # role of the key that is both subject key and signer (all certs are self-signed)
    nvctr: str  # "trusted_nvctr" or "non_trusted_nvctr"
    keys_carried: tuple[tuple[str, str], ...] = ()  # (extension, key role)
    # Images hashed: (extension, FIP image name, required). Optional images that are absent get an
    # all-zero hash, as cert_create does.
    hashes: tuple[tuple[str, str, bool], ...] = ()


def _stm32_serial() -> int:
    return secrets.randbits(63) | 1


def cert_create_serial() -> int:
    """cert_create's serial number: ``BN_rand(64, top=0)``, 64 random bits with the top one set."""
    return secrets.randbits(63) | (1 << 63)


def _stm32_pkh(public_key) -> bytes:
    """STM32MP15 PKH: SHA-256 of the raw X||Y of the ROT key (``crypto_convert_pk``)."""
    return hashlib.sha256(public_key.public_bytes(Encoding.X962, PublicFormat.UncompressedPoint)[1:]).digest()


def rotpk_hash(public_key) -> bytes:
    """TF-A's ROTPK hash (``ROTPK_HASH``, PLAT=qemu and the Arm platforms): SHA-256 of the DER
    SubjectPublicKeyInfo of the ROT key."""
    return hashlib.sha256(spki_der(public_key)).digest()


def _check_p256(role: str, public_key) -> None:
    """TF-A's STM32 crypto library accepts only ECDSA P-256 + SHA-256 (stm32mp_crypto_lib.c)."""
    if not isinstance(public_key, ec.EllipticCurvePublicKey) or public_key.curve.name != "secp256r1":
        raise UsageError("the STM32MP1 ROT key must be an ECDSA P-256 key (the BL2 signing key)")


def _check_generic(role: str, public_key) -> None:
    """cert_create's ``--key-alg ecdsa`` (P-256) and ``rsa`` (2048, 3072, 4096) with SHA-256."""
    if isinstance(public_key, ec.EllipticCurvePublicKey) and public_key.curve.name == "secp256r1":
        return
    if isinstance(public_key, rsa.RSAPublicKey) and public_key.key_size in (2048, 3072, 4096):
        return
    raise UsageError(f"the {role.replace('_', '-')} key must be ECDSA P-256 or RSA 2048/3072/4096 "
                     "(TF-A's KEY_ALG=ecdsa or rsa with SHA-256)")


@dataclass(frozen=True)
class Chain:
    """One chain of trust: its certificates in dependency order (a certificate's carried keys
    authenticate the ones after it) and the rules that differ between platforms."""

    name: str
    certs: tuple[CertSpec, ...]
    ephemeral_roles: tuple[str, ...]  # roles whose keys are made fresh for each signing
    pkh_name: str  # what the platform stores of the ROT key
    pkh: Callable  # public key -> bytes
    check_key: Callable  # (role, public key) -> None or UsageError
    anchor: str  # the certificate whose subject key is taken as the ROT key (then checked)
    serial: Callable[[], int] = cert_create_serial

    @property
    def cert_names(self) -> list[str]:
        return [spec.name for spec in self.certs]

    @property
    def image_names(self) -> list[str]:
        return [img for spec in self.certs for _, img, _ in spec.hashes]

    @property
    def roles(self) -> list[str]:
        """Every key role, the ROT first, in the order the chain introduces them."""
        out = ["rot"]
        for spec in self.certs:
            out += [role for _, role in spec.keys_carried if role not in out]
        return out


# The certificates both chains share, as cert_create makes them (tools/cert_create/src/tbbr/tbb_cert.c).
TRUSTED_KEY_CERT = CertSpec("trusted_key_cert", "Trusted Key Certificate", "rot", "trusted_nvctr",
                            (("trusted_world_pk", "trusted_world"), ("non_trusted_world_pk", "non_trusted_world")))
TOS_FW_CERTS = (
    CertSpec("tos_fw_key_cert", "Trusted OS Firmware Key Certificate", "trusted_world", "trusted_nvctr",
             (("tos_fw_content_pk", "tos_fw_content"),)),
    CertSpec("tos_fw_content_cert", "Trusted OS Firmware Content Certificate", "tos_fw_content", "trusted_nvctr",
             hashes=(("tos_fw_hash", "tos_fw", True), ("tos_fw_extra1_hash", "tos_fw_extra1", False),
                     ("tos_fw_extra2_hash", "tos_fw_extra2", False), ("tos_fw_config_hash", "tos_fw_config", False))),
)
NT_FW_CERTS = (
    CertSpec("nt_fw_key_cert", "Non-Trusted Firmware Key Certificate", "non_trusted_world", "non_trusted_nvctr",
             (("nt_fw_content_pk", "nt_fw_content"),)),
    CertSpec("nt_fw_content_cert", "Non-Trusted Firmware Content Certificate", "nt_fw_content", "non_trusted_nvctr",
             hashes=(("nt_fw_hash", "nt_fw", True), ("nt_fw_config_hash", "nt_fw_config", False))),
)

STM32MP1 = Chain(
    "stm32mp1",
    (
        CertSpec("stm32mp_cfg_cert", "STM32MP config FW Certificate", "rot", "trusted_nvctr",
                 hashes=(("hw_config_hash", "hw_config", False), ("fw_config_hash", "fw_config", False))),
        TRUSTED_KEY_CERT,
        *TOS_FW_CERTS,
        *NT_FW_CERTS,
    ),
    ephemeral_roles=("trusted_world", "non_trusted_world", "tos_fw_content", "nt_fw_content"),
    pkh_name="PKH",
    pkh=_stm32_pkh,
    check_key=_check_p256,
    anchor="trusted_key_cert",
    serial=_stm32_serial,
)

# tools/cert_create/src/tbbr/tbb_cert.c, in its order, without the SCP, SiP SP and FWU certificates
# (no SCP on QEMU/i.MX8M; secure partitions and firmware update are not built here).
GENERIC = Chain(
    "generic",
    (
        CertSpec("tb_fw_cert", "Trusted Boot FW Certificate", "rot", "trusted_nvctr",
                 hashes=(("tb_fw_hash", "tb_fw", True), ("tb_fw_config_hash", "tb_fw_config", False),
                         ("hw_config_hash", "hw_config", False), ("fw_config_hash", "fw_config", False))),
        TRUSTED_KEY_CERT,
        CertSpec("soc_fw_key_cert", "SoC Firmware Key Certificate", "trusted_world", "trusted_nvctr",
                 (("soc_fw_content_pk", "soc_fw_content"),)),
        CertSpec("soc_fw_content_cert", "SoC Firmware Content Certificate", "soc_fw_content", "trusted_nvctr",
                 hashes=(("soc_fw_hash", "soc_fw", True), ("soc_fw_config_hash", "soc_fw_config", False))),
        *TOS_FW_CERTS,
        *NT_FW_CERTS,
    ),
    ephemeral_roles=(),
    pkh_name="ROTPK hash",
    pkh=rotpk_hash,
    check_key=_check_generic,
    anchor="tb_fw_cert",
)

CHAINS = {chain.name: chain for chain in (STM32MP1, GENERIC)}

# cert_create's option for the key of each role (``--rot-key``, ``--soc-fw-key`` ...).
KEY_OPTIONS = {
    "rot": "rot-key",
    "trusted_world": "trusted-world-key",
    "non_trusted_world": "non-trusted-world-key",
    "soc_fw_content": "soc-fw-key",
    "tos_fw_content": "tos-fw-key",
    "nt_fw_content": "nt-fw-key",
}


def chain(name: str) -> Chain:
    try:
        return CHAINS[name]
    except KeyError:
        raise UsageError(f"unknown chain of trust {name!r} (one of {', '.join(CHAINS)})") from None


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
    _check_p256("rot", public_key)


def _pss() -> padding.PSS:
    return padding.PSS(mgf=padding.MGF1(hashes.SHA256()), salt_length=PSS_SALT)


# ---------------------------------------------------------------------------------------------
# Building


def check_key_roles(cot: Chain, roles) -> list[str]:
    """Refuse a set of key roles the chain cannot take (some missing, or one it makes itself);
    return the roles it needs."""
    wanted = [r for r in cot.roles if r not in cot.ephemeral_roles]
    missing = [r for r in wanted if r not in roles]
    if missing:
        raise UsageError(f"the {cot.name} chain needs the key(s) {', '.join('--' + KEY_OPTIONS[r] for r in missing)}")
    extra = [r for r in roles if r not in wanted]
    if extra:
        raise UsageError(f"the {cot.name} chain takes no {', '.join('--' + KEY_OPTIONS.get(r, r) for r in extra)}"
                         + (" (its keys below the ROT key are made fresh for each signing)"
                            if cot.ephemeral_roles else ""))
    return wanted


def build_chain(
    cot: Chain,
    images: dict[str, bytes],
    keys: dict,
    *,
    tfw_nvctr: int = 0,
    ntfw_nvctr: int = 0,
    not_before: datetime.datetime | None = None,
) -> dict[str, bytes]:
    """Return the DER certificates of chain ``cot``, by certificate name.

    ``keys`` maps each role (``Chain.roles`` less its ``ephemeral_roles``) to a cryptography
    private key, possibly token-backed; the ephemeral roles get fresh software keys that live only
    for this call. Every certificate is checked against its parent's key before it is returned.
    """
    for name, value in (("--tfw-nvctr", tfw_nvctr), ("--ntfw-nvctr", ntfw_nvctr)):
        if not 0 <= value <= 0x7FFFFFFF:
            raise UsageError(f"{name} {value} out of range (0..2147483647)")
    wanted = check_key_roles(cot, [r for r, k in keys.items() if k is not None])
    for role in wanted:
        cot.check_key(role, keys[role].public_key())
    families = {isinstance(keys[r].public_key(), rsa.RSAPublicKey) for r in wanted}
    if len(families) > 1:
        raise UsageError(f"the {cot.name} chain's keys must all be ECDSA or all RSA (TF-A is built for one "
                         "KEY_ALG)")
    unknown = set(images) - set(cot.image_names)
    if unknown:
        raise UsageError(f"no certificate hashes image(s) {', '.join(sorted(unknown))}")
    for spec in cot.certs:
        for _, image, required in spec.hashes:
            if required and image not in images:
                raise InputError(f"the chain of trust needs the {image} image, which is missing")

    keys = dict(keys)
    for role in cot.ephemeral_roles:
        keys[role] = ec.generate_private_key(ec.SECP256R1())
    counters = {"trusted_nvctr": tfw_nvctr, "non_trusted_nvctr": ntfw_nvctr}
    # Reproducible builds fix the time; TF-A does not check the certificates' validity.
    start = not_before or source_datetime()

    certs = {}
    for spec in cot.certs:
        exts: list[tuple[str, bytes]] = [(spec.nvctr, nv_counter(counters[spec.nvctr]))]
        for ext, role in spec.keys_carried:
            exts.append((ext, spki_der(keys[role].public_key())))
        for ext, image, _ in spec.hashes:
            if image in images:
                exts.append((ext, digest_info(images[image])))
            else:
                exts.append((ext, digest_info_of(bytes(32))))
        certs[spec.name] = _certificate(spec.cn, keys[spec.key], exts, start, cot.serial())
    verify_chain(cot, certs, images, rot_public_key=keys["rot"].public_key())
    return certs


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
    return build_chain(STM32MP1, images, {"rot": rot_key}, tfw_nvctr=tfw_nvctr, ntfw_nvctr=ntfw_nvctr,
                       not_before=not_before)


def _certificate(cn: str, key, exts: list[tuple[str, bytes]], start: datetime.datetime, serial: int) -> bytes:
    public_key = key.public_key()
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(public_key)
        .serial_number(serial)
        .not_valid_before(start)
        .not_valid_after(start + datetime.timedelta(days=VALIDITY_DAYS))
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(public_key), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=False)
    )
    for ext, value in exts:
        builder = builder.add_extension(x509.UnrecognizedExtension(OID[ext], value), critical=True)
    if isinstance(public_key, rsa.RSAPublicKey):
        cert = builder.sign(key, hashes.SHA256(), rsa_padding=_pss())
    else:
        cert = builder.sign(key, hashes.SHA256())
    return cert.public_bytes(Encoding.DER)


# ---------------------------------------------------------------------------------------------
# Verifying (the rules of TF-A's auth module for these chains)


def _load(name: str, der: bytes) -> x509.Certificate:
    try:
        return load_certificate_bytes(der)
    except CertificateError as err:
        raise VerificationError(f"{name} {err}") from None


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


# The signature AlgorithmIdentifiers cert_create writes (outer and inside the TBS): ecdsa-with-SHA256
# without parameters; RSASSA-PSS {SHA-256 (NULL), MGF1 SHA-256 (NULL), salt 32}.
SIG_ALG_ECDSA = bytes.fromhex("300a06082a8648ce3d040302")
SIG_ALG_PSS = bytes.fromhex("304106092a864886f70d01010a3034a00f300d06096086480165030402010500a11c301a06092a864886"
                            "f70d010108300d06096086480165030402010500a203020120")


def _signature_algorithms(der: bytes, cert_name: str) -> tuple[bytes, bytes]:
    """(outer, TBS) signature AlgorithmIdentifier DER, read without interpreting them.

    The signatureValue BIT STRING, outside what is signed, must declare no unused bits: TF-A reads
    it with mbedtls_asn1_get_bitstring_null, which refuses any other count (cert_parse in
    drivers/auth/mbedtls/mbedtls_x509_parser.c, verify_signature in mbedtls_crypto.c), while
    cryptography accepts a count whose padding bits are zero and hands back the same signature."""
    try:
        outer = asn1_x509.Certificate.load(der)
        algorithms = outer["signature_algorithm"].dump(), outer["tbs_certificate"]["signature"].dump()
        value = outer["signature_value"].contents
    except (ValueError, TypeError, KeyError):
        raise VerificationError(f"{cert_name} is not a DER X.509 v1-v3 certificate") from None
    if value[:1] != b"\0":
        raise VerificationError(f"{cert_name} signature BIT STRING declares unused bits (TF-A requires none)")
    return algorithms


def _check_signature(cert: x509.Certificate, der: bytes, cert_name: str, public_key) -> None:
    if spki_der(_public_key(cert, cert_name)) != spki_der(public_key):
        raise VerificationError(f"{cert_name} subject key is not the key its parent authorises")
    outer, inner = _signature_algorithms(der, cert_name)
    if outer != inner:
        raise VerificationError(f"{cert_name} names two different signature algorithms")
    try:
        if isinstance(public_key, ec.EllipticCurvePublicKey):
            if outer != SIG_ALG_ECDSA:
                raise VerificationError(f"{cert_name} is not signed with ecdsa-with-SHA256")
            public_key.verify(cert.signature, cert.tbs_certificate_bytes, ec.ECDSA(hashes.SHA256()))
        elif isinstance(public_key, rsa.RSAPublicKey):
            if outer != SIG_ALG_PSS:
                raise VerificationError(f"{cert_name} is not signed with RSASSA-PSS (SHA-256, MGF1-SHA-256, "
                                        f"salt {PSS_SALT})")
            public_key.verify(cert.signature, cert.tbs_certificate_bytes, _pss(), hashes.SHA256())
        else:
            raise VerificationError(f"{cert_name} holds neither an EC nor an RSA key")
    except InvalidSignature:
        raise VerificationError(f"{cert_name} signature does not verify") from None
    except (ValueError, UnsupportedAlgorithm) as err:
        raise VerificationError(f"{cert_name} signature cannot be checked: {' '.join(str(err).split())}") from None


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


def verify_chain(
    cot: Chain,
    certs: dict[str, bytes],
    images: dict[str, bytes],
    *,
    rot_public_key=None,
    rot_pkh: bytes | None = None,
) -> dict:
    """Walk chain ``cot`` from the ROT key; check every signature, carried key and image hash.

    The ROT is given as a public key, as the hash the platform stores (``cot.pkh``: STM32MP15 PKH
    or TF-A's ROTPK hash), or neither (then the subject key of the first certificate the ROT key
    signs is taken as the root and reported). Returns ``{"rot_pkh": hex, "nv_counters": {...},
    "images": {name: hex sha256}, "keys": {role: hex sha256 of its SubjectPublicKeyInfo}}``.
    """
    missing = [n for n in cot.cert_names if n not in certs]
    if missing:
        raise VerificationError(f"missing certificate(s): {', '.join(missing)}")
    parsed = {n: _load(n, certs[n]) for n in cot.cert_names}
    first = cot.anchor
    root = _public_key(parsed[first], first)
    if rot_public_key is not None and spki_der(root) != spki_der(rot_public_key):
        raise VerificationError(f"{first} is not made for the given ROT key")
    try:
        cot.check_key("rot", root)
    except UsageError as err:
        raise VerificationError(f"{first}: {err}") from None
    pkh = cot.pkh(root)
    if rot_pkh is not None and rot_pkh != pkh:
        raise VerificationError(f"ROT key {cot.pkh_name} {pkh.hex()} does not match the expected {rot_pkh.hex()}")

    authorised = {"rot": root}
    counters: dict[str, int] = {}
    hashed: dict[str, str] = {}
    for spec in cot.certs:
        cert = parsed[spec.name]
        _check_signature(cert, certs[spec.name], spec.name, authorised[spec.key])
        value = _nv_value(_ext(cert, spec.name, spec.nvctr), spec.name)
        if counters.setdefault(spec.nvctr, value) != value:
            raise VerificationError(f"{spec.name} carries {spec.nvctr} {value}, other certificates {counters[spec.nvctr]}")
        for ext, role in spec.keys_carried:
            try:
                authorised[role] = load_der_public_key(_ext(cert, spec.name, ext))
            except (ValueError, TypeError, UnsupportedAlgorithm):
                raise VerificationError(f"{spec.name} {ext} is not a supported SubjectPublicKeyInfo") from None
        for ext, image, required in spec.hashes:
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
    report = {"rot_pkh": pkh.hex(), "nv_counters": counters, "images": hashed}
    if not cot.ephemeral_roles:  # (STM32MP1's other keys are thrown away after signing)
        report["keys"] = {role: hashlib.sha256(spki_der(authorised[role])).hexdigest() for role in cot.roles}
    return report
