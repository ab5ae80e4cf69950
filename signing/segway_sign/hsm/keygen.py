"""Key pairs generated inside the token: sensitive, never extractable, signing only.

``CKA_ID`` is the RFC 5280 key identifier of the public key (SHA-1 of the subjectPublicKey bits),
so the same ID shows up as the certificates' subjectKeyIdentifier. The ID can only be known after
generation, so keys are created under a random ID and then relabelled.
"""

from __future__ import annotations

import secrets

from cryptography import x509
from cryptography.hazmat.primitives.serialization import load_der_public_key
from pkcs11 import Attribute, KeyType, MechanismFlag, ObjectClass
from pkcs11.util.ec import encode_ec_public_key, encode_named_curve_parameters
from pkcs11.util.rsa import encode_rsa_public_key

from ..errors import TokenError, UsageError
from .keys import find_private_key
from .session import TokenSession

KEY_KINDS = {
    "rsa2048": (KeyType.RSA, 2048),
    "rsa3072": (KeyType.RSA, 3072),
    "rsa4096": (KeyType.RSA, 4096),
    "p256": (KeyType.EC, "secp256r1"),
    "p384": (KeyType.EC, "secp384r1"),
}

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
