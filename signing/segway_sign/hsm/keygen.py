"""Key pairs generated inside the token: sensitive, never extractable, signing only.

``CKA_ID`` is the RFC 5280 key identifier of the public key (SHA-1 of the subjectPublicKey bits),
so the same ID shows up as the certificates' subjectKeyIdentifier. The ID can only be known after
generation, so keys are created under a random ID and then relabelled.
"""

from __future__ import annotations

import hashlib
import secrets

from cryptography import x509
from cryptography.hazmat.primitives.serialization import load_der_public_key
from pkcs11 import Attribute, KeyType, Mechanism, MechanismFlag, ObjectClass
from pkcs11.exceptions import (AttributeValueInvalid, DomainParamsInvalid, FunctionFailed, GeneralError,
                               MechanismInvalid, MechanismParamInvalid, TemplateInconsistent)
from pkcs11.util.ec import encode_ec_public_key, encode_named_curve_parameters
from pkcs11.util.rsa import encode_rsa_public_key

from ..errors import TokenError, UsageError
from ..raw_ec import RAW_CURVES, decode_ec_point
from .keys import find_private_key
from .module import describe
from .session import TokenSession

# What tokens answer to EC_PARAMS naming a curve they do not implement (CKR_CURVE_NOT_SUPPORTED
# has no class of its own in python-pkcs11 and arrives as a general error or failure).
_CURVE_REFUSED = (AttributeValueInvalid, DomainParamsInvalid, FunctionFailed, GeneralError, MechanismInvalid,
                  MechanismParamInvalid, TemplateInconsistent)

KEY_KINDS = {
    "rsa2048": (KeyType.RSA, 2048),
    "rsa3072": (KeyType.RSA, 3072),
    "rsa4096": (KeyType.RSA, 4096),
    "p256": (KeyType.EC, "secp256r1"),
    "p384": (KeyType.EC, "secp384r1"),
    # The STM32 ROM's "Brainpool 256"; cryptography lacks it, so it is a TokenRawECKey (STM32 only).
    "bp256t1": (KeyType.EC, "brainpoolP256t1"),
}
# Kinds whose public key cryptography cannot load: STM32 headers only (pki/certs.py certifies them).
RAW_KINDS = {"bp256t1"}

_PRIVATE_TEMPLATE = {
    Attribute.TOKEN: True,
    Attribute.PRIVATE: True,
    Attribute.SENSITIVE: True,
    Attribute.EXTRACTABLE: False,
    Attribute.SIGN: True,
    Attribute.DECRYPT: False,
    Attribute.UNWRAP: False,
    Attribute.DERIVE: False,
}
_PUBLIC_TEMPLATE = {
    Attribute.TOKEN: True,
    Attribute.PRIVATE: False,
    Attribute.VERIFY: True,
    Attribute.ENCRYPT: False,
    Attribute.WRAP: False,
}


def objects_labelled(session: TokenSession, label: str) -> list:
    return session.call(lambda s: list(s.get_objects({Attribute.LABEL: label})), f"listing objects '{label}'")


def destroy_objects(session: TokenSession, label: str) -> int:
    def op(s):
        objs = list(s.get_objects({Attribute.LABEL: label}))
        for obj in objs:
            obj.destroy()
        return len(objs)
    return session.call(op, f"deleting objects '{label}'")


def _check_ec_generation_offered(s, token_label: str, curve: str, bits: int) -> None:
    """Refuse before generating when the token does not list EC key generation for this size."""
    slot = s.token.slot
    if Mechanism.EC_KEY_PAIR_GEN not in slot.get_mechanisms():
        raise TokenError(f"token '{token_label}' does not offer curve {curve} "
                         "(it lists no EC key-pair generation)")
    info = slot.get_mechanism_info(Mechanism.EC_KEY_PAIR_GEN)
    low, high = info.min_key_length or 0, info.max_key_length
    if high and not low <= bits <= high:  # some tokens report 0 for "not stated"
        raise TokenError(f"token '{token_label}' does not offer curve {curve} (its EC keys are "
                         f"{info.min_key_length} to {info.max_key_length} bits)")


def generate(session: TokenSession, kind: str, label: str, replace: bool = False):
    """Create a key pair labelled ``label``; return it as a token private key."""
    if kind not in KEY_KINDS:
        raise UsageError(f"unknown key type {kind!r} (choose from {', '.join(KEY_KINDS)})")
    if objects_labelled(session, label):
        if not replace:
            raise TokenError(f"token '{session.label}' already holds objects labelled '{label}' "
                             "(refusing to overwrite keys; use --replace to destroy and recreate them)")
        destroy_objects(session, label)
    key_type, size = KEY_KINDS[kind]
    temp_id = secrets.token_bytes(20)

    def op(s):
        common = dict(id=temp_id, label=label, store=True,
                      public_template=_PUBLIC_TEMPLATE, private_template=_PRIVATE_TEMPLATE)
        if key_type == KeyType.RSA:
            pub, priv = s.generate_keypair(KeyType.RSA, size, capabilities=MechanismFlag.SIGN | MechanismFlag.VERIFY,
                                           **common)
            spki = encode_rsa_public_key(pub)
        elif kind in RAW_KINDS:
            oid, point_size = RAW_CURVES[size]
            _check_ec_generation_offered(s, session.label, size, 8 * point_size)
            params = s.create_domain_parameters(KeyType.EC, {Attribute.EC_PARAMS: encode_named_curve_parameters(oid)},
                                                local=True)
            try:
                pub, priv = params.generate_keypair(capabilities=MechanismFlag.SIGN | MechanismFlag.VERIFY, **common)
            except _CURVE_REFUSED as err:
                raise TokenError(f"token '{session.label}' does not offer curve {size} "
                                 f"(key generation refused: {describe(err)})") from None
            # RFC 5280 method 1: SHA-1 of the subjectPublicKey bits, here the uncompressed point.
            point = decode_ec_point(pub[Attribute.EC_POINT], point_size)
            key_id = hashlib.sha1(point).digest()
            pub[Attribute.ID] = key_id
            priv[Attribute.ID] = key_id
            return key_id
        else:
            params = s.create_domain_parameters(KeyType.EC, {Attribute.EC_PARAMS: encode_named_curve_parameters(size)},
                                                local=True)
            pub, priv = params.generate_keypair(capabilities=MechanismFlag.SIGN | MechanismFlag.VERIFY, **common)
            spki = encode_ec_public_key(pub)
        key_id = x509.SubjectKeyIdentifier.from_public_key(load_der_public_key(spki)).digest
        pub[Attribute.ID] = key_id
        priv[Attribute.ID] = key_id
        return key_id

    key_id = session.call(op, f"generating {kind} key '{label}'")
    return find_private_key(session, session.uri.with_object(label=label, key_id=key_id))


def key_attributes(session: TokenSession, key) -> dict[str, bool]:
    """The protection attributes a test or a ceremony record wants to show."""
    def op(s):
        priv = s.get_key(object_class=ObjectClass.PRIVATE_KEY, id=key.key_id, label=key.label)
        return {name: bool(priv[attr]) for name, attr in (
            ("sensitive", Attribute.SENSITIVE), ("extractable", Attribute.EXTRACTABLE),
            ("always_sensitive", Attribute.ALWAYS_SENSITIVE), ("never_extractable", Attribute.NEVER_EXTRACTABLE),
            ("local", Attribute.LOCAL), ("token", Attribute.TOKEN), ("private", Attribute.PRIVATE))}
    return session.call(op, f"reading attributes of {key.uri}")
