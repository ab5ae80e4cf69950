"""Token keys as ``cryptography`` private keys (and, for curves it lacks, ``TokenRawECKey``).

X.509 builders, CMS and every artifact format take a ``cryptography`` key; these subclasses make a
key inside the token one of them. Digests are always computed on the host and only the digest goes
to the token, with the mechanisms every transport passes (p11-kit 0.24 and pkcs11-proxy allow-list
mechanism parameters): ``CKM_RSA_PKCS`` over a DigestInfo, ``CKM_RSA_PKCS_PSS`` with explicit
parameters, ``CKM_ECDSA`` over the digest. Every signature is checked with the public key before it
is returned.
"""

from __future__ import annotations

from asn1crypto.algos import DigestInfo
from asn1crypto.core import Null
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa, utils
from cryptography.hazmat.primitives.serialization import load_der_public_key
from pkcs11 import MGF, Attribute, KeyType, Mechanism, ObjectClass
from pkcs11.exceptions import AttributeSensitive, AttributeTypeInvalid
from pkcs11.util.ec import encode_ec_public_key
from pkcs11.util.rsa import encode_rsa_public_key

from ..crypto import CertificateError, ecdsa_der, load_certificate_bytes
from ..errors import InputError, TokenError, UsageError, VerificationError
from ..raw_ec import RAW_CURVES, RawECPublicKey, curve_from_ec_params, decode_ec_point
from .raw_ec_key import TokenRawECKey
from .session import TokenSession
from .token_key import TokenKey
from .uri import Pkcs11Uri

_HASHES: dict[str, tuple[type[hashes.HashAlgorithm], Mechanism, MGF]] = {
    "sha1": (hashes.SHA1, Mechanism.SHA_1, MGF.SHA1),
    "sha224": (hashes.SHA224, Mechanism.SHA224, MGF.SHA224),
    "sha256": (hashes.SHA256, Mechanism.SHA256, MGF.SHA256),
    "sha384": (hashes.SHA384, Mechanism.SHA384, MGF.SHA384),
    "sha512": (hashes.SHA512, Mechanism.SHA512, MGF.SHA512),
}


def host_digest(data: bytes, algorithm) -> tuple[bytes, hashes.HashAlgorithm]:
    """Return (digest, hash algorithm) for ``data`` that is raw or already ``Prehashed``."""
    if isinstance(algorithm, utils.Prehashed):
        algo = algorithm._algorithm
        if len(data) != algo.digest_size:
            raise UsageError(f"prehashed data is {len(data)} bytes, {algo.name} needs {algo.digest_size}")
        digest = bytes(data)
    else:
        algo = algorithm
        h = hashes.Hash(algo)
        h.update(data)
        digest = h.finalize()
    if algo.name not in _HASHES:
        raise UsageError(f"hash {algo.name} is not supported for token signatures")
    return digest, algo


class TokenRSAPrivateKey(TokenKey, rsa.RSAPrivateKey):
    _public: rsa.RSAPublicKey

    @property
    def key_size(self) -> int:
        return self._public.key_size

    def decrypt(self, ciphertext: bytes, padding) -> bytes:
        raise UsageError(f"key {self.uri} is a signing key; decryption is not offered")

    def sign(self, data: bytes, padding_: padding.AsymmetricPadding, algorithm) -> bytes:
        digest, algo = host_digest(data, algorithm)
        _, hash_mech, mgf = _HASHES[algo.name]
        if isinstance(padding_, padding.PKCS1v15):
            # PKCS#1 v1.5 DigestInfo carries an explicit NULL parameter (RFC 8017 §9.2 note 1).
            info = DigestInfo({"digest_algorithm": {"algorithm": algo.name, "parameters": Null()},
                               "digest": digest}).dump()
            signature = self._raw_sign(info, Mechanism.RSA_PKCS)
        elif isinstance(padding_, padding.PSS):
            if not isinstance(padding_._mgf, padding.MGF1) or padding_._mgf._algorithm.name != algo.name:
                raise UsageError("PSS signatures use MGF1 with the same hash as the message")
            salt = _pss_salt(padding_, algo, self.key_size)
            signature = self._raw_sign(digest, Mechanism.RSA_PKCS_PSS, (hash_mech, mgf, salt))
        else:
            raise UsageError(f"RSA padding {padding_.name} is not supported")
        try:
            self._public.verify(signature, digest, padding_, utils.Prehashed(algo))
        except InvalidSignature:
            raise VerificationError(f"the token returned a signature that does not verify with {self.uri}") from None
        return signature


def _pss_salt(pss: padding.PSS, algo: hashes.HashAlgorithm, key_size: int) -> int:
    salt = pss._salt_length
    if isinstance(salt, int):
        return salt
    if salt is padding.PSS.DIGEST_LENGTH:
        return algo.digest_size
    if salt is padding.PSS.MAX_LENGTH:
        return (key_size + 7) // 8 - algo.digest_size - 2
    raise UsageError("PSS salt length AUTO is only for verification")


class TokenECPrivateKey(TokenKey, ec.EllipticCurvePrivateKey):
    _public: ec.EllipticCurvePublicKey

    @property
    def curve(self) -> ec.EllipticCurve:
        return self._public.curve

    @property
    def key_size(self) -> int:
        return self._public.curve.key_size

    def exchange(self, algorithm, peer_public_key) -> bytes:
        raise UsageError(f"key {self.uri} is a signing key; key agreement is not offered")

    def sign(self, data: bytes, signature_algorithm: ec.EllipticCurveSignatureAlgorithm) -> bytes:
        if not isinstance(signature_algorithm, ec.ECDSA):
            raise UsageError("EC keys sign with ECDSA only")
        digest, algo = host_digest(data, signature_algorithm.algorithm)
        raw = self._raw_sign(digest, Mechanism.ECDSA)
        signature = ecdsa_der(raw)
        try:
            self._public.verify(signature, digest, ec.ECDSA(utils.Prehashed(algo)))
        except InvalidSignature:
            raise VerificationError(f"the token returned a signature that does not verify with {self.uri}") from None
        return signature


TokenPrivateKey = TokenRSAPrivateKey | TokenECPrivateKey


def _public_from_objects(session, priv, key_id: bytes):
    """The public half: the private object's modulus for RSA, else the public key object or certificate."""
    if priv.key_type == KeyType.RSA:
        return load_der_public_key(encode_rsa_public_key(priv))
    pubs = list(session.get_objects({Attribute.CLASS: ObjectClass.PUBLIC_KEY, Attribute.ID: key_id}))
    if len(pubs) == 1:
        return load_der_public_key(encode_ec_public_key(pubs[0]))
    certs = list(session.get_objects({Attribute.CLASS: ObjectClass.CERTIFICATE, Attribute.ID: key_id}))
    if len(certs) == 1:
        try:
            return load_certificate_bytes(bytes(certs[0][Attribute.VALUE])).public_key()
        except CertificateError as err:
            raise TokenError(f"the certificate with CKA_ID {key_id.hex()} {err}") from None
        except UnsupportedAlgorithm as err:
            raise TokenError(f"the certificate with CKA_ID {key_id.hex()} holds an unsupported key "
                             f"({' '.join(str(err).split())})") from None
    raise TokenError(f"no unique public key or certificate with CKA_ID {key_id.hex()} next to the private key")


def _raw_ec_public(session, priv, key_id: bytes) -> RawECPublicKey | None:
    """The public key when the private key is on a curve ``cryptography`` lacks, else None."""
    try:
        curve = curve_from_ec_params(priv[Attribute.EC_PARAMS])
    except (AttributeTypeInvalid, AttributeSensitive, KeyError):
        curve = None  # a token that hides it on the private object: the usual path reads the public key
    if curve is None:
        return None
    pubs = list(session.get_objects({Attribute.CLASS: ObjectClass.PUBLIC_KEY, Attribute.ID: key_id}))
    if len(pubs) != 1:
        raise TokenError(f"no unique public key with CKA_ID {key_id.hex()} next to the {curve} private key")
    try:
        return RawECPublicKey(curve, decode_ec_point(pubs[0][Attribute.EC_POINT], RAW_CURVES[curve][1]))
    except InputError as err:
        raise TokenError(f"public key with CKA_ID {key_id.hex()}: {err}") from None


def find_private_key(session: TokenSession, uri: Pkcs11Uri) -> TokenPrivateKey | TokenRawECKey:
    """The one private key a URI names; zero or several matches are errors."""
    if uri.object is None and uri.id is None:
        raise UsageError(f"key URI {uri} names no key: add object=<label> or id=<hex>")
    if uri.type not in (None, "private"):
        raise UsageError(f"key URI {uri} has type={uri.type}; signing needs the private key")
    template = {Attribute.CLASS: ObjectClass.PRIVATE_KEY}
    if uri.object is not None:
        template[Attribute.LABEL] = uri.object
    if uri.id is not None:
        template[Attribute.ID] = uri.id

    def lookup(s):
        found = list(s.get_objects(template))
        if len(found) != 1:
            return found, None
        priv = found[0]
        if priv.key_type == KeyType.EC:
            raw = _raw_ec_public(s, priv, priv[Attribute.ID])
            if raw is not None:
                return found, raw
        return found, _public_from_objects(s, priv, priv[Attribute.ID])

    found, public = session.call(lookup, f"looking up {uri}")
    if not found:
        raise TokenError(f"no private key matching {uri} in token '{session.label}'")
    if len(found) > 1:
        raise TokenError(f"{len(found)} private keys match {uri} in token '{session.label}': "
                         "make the URI unambiguous with id= or a unique object=")
    priv = found[0]
    label, key_id = priv[Attribute.LABEL], priv[Attribute.ID]
    if priv.key_type == KeyType.RSA:
        return TokenRSAPrivateKey(session, uri, label, key_id, public)
    if priv.key_type == KeyType.EC:
        if isinstance(public, RawECPublicKey):
            return TokenRawECKey(session, uri, label, key_id, public)
        return TokenECPrivateKey(session, uri, label, key_id, public)
    raise TokenError(f"key {uri} has type {priv.key_type.name}; only RSA and EC keys sign")
