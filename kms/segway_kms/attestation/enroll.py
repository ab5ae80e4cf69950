"""Host side of AK enrolment: a MakeCredential challenge only the TPM holding the EK can answer.

After the evidence checks out (EK certificate chain, EK certificate for the TPM's EK), the host encrypts
a random secret to the EK, bound to the AK's name; the daemon's TPM recovers it with ActivateCredential
only if the AK and the EK live in the same TPM. The AK is then pinned for later `attest verify --ak`.
"""
from __future__ import annotations

import hmac
import os

from cryptography.hazmat.primitives import serialization
from tpm2_pytss.types import TPM2B_PUBLIC
from tpm2_pytss.utils import make_credential


def challenge(evidence: dict) -> tuple[bytes, bytes, bytes]:
    """Return (secret, credential_blob, encrypted_secret) for the evidence's EK and AK."""
    ek, _ = TPM2B_PUBLIC.unmarshal(evidence["ek_public_area"])
    ak, _ = TPM2B_PUBLIC.unmarshal(evidence["ak_public_area"])
    secret = os.urandom(32)
    blob, encrypted = make_credential(ek, secret, ak.publicArea.get_name())
    return secret, blob.marshal(), encrypted.marshal()


def answer_matches(secret: bytes, answer: bytes) -> bool:
    return hmac.compare_digest(secret, answer)


def ak_pem(evidence: dict) -> bytes:
    ak, _ = TPM2B_PUBLIC.unmarshal(evidence["ak_public_area"])
    return serialization.load_pem_public_key(ak.to_pem()).public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
