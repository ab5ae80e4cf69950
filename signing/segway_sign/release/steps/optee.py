"""Step type ``optee-ta`` (OP-TEE Trusted Applications signed with the TA key)."""

from __future__ import annotations

import re
import uuid as uuidlib

from cryptography.hazmat.primitives.asymmetric import rsa

from ...crypto import spki_der
from ...errors import InputError, VerificationError
from ...formats.optee import ta
from .base import StepContext, StepType, VerifyContext, register

_UUID_NAME = re.compile(r"^([0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12})(\.|$)")


def _uuid_from_name(name: str) -> uuidlib.UUID | None:
    match = _UUID_NAME.match(name)
    return uuidlib.UUID(match.group(1)) if match else None


@register("optee-ta")
class OpteeTa(StepType):
    """OP-TEE Trusted Applications signed as ``ta sign`` signs them.

    Each input is a stripped TA ELF (``<uuid>.stripped.elf``, or the ``<uuid>.ta`` a deferred build
    left unsigned) or a TA signed with another key (signed again). Its UUID is the signed TA's, else
    the ELF's ``.ta_head``, else its file name's; the output is ``<uuid>.ta``, the name
    tee-supplicant loads it by. The step's key must be the key OP-TEE was built with
    (``TA_PUBLIC_KEY``). The manifest records each TA's file, UUID, version and algorithm.
    ``release verify`` checks each TA as OP-TEE's loader does (sizes, signature, hash of header and
    payload), that its file name is its signed UUID, and that a trusted certificate holds its key.

    Inputs:
        any role: a TA to sign (the role names only the input)

    Options:
        algo: pkcs1 (TEE_ALG_RSASSA_PKCS1_V1_5_SHA256, reproducible) or pss (default pkcs1)
        ta_version: the TAs' version for OP-TEE's rollback check (default: a signed input's, else 0)
    """

    def check_options(self, step) -> None:
        algo = step.options.get("algo", "pkcs1")
        if algo not in ta.ALGOS:
            raise InputError(f"step '{step.id}': algo {algo!r} is not one of {', '.join(ta.ALGOS)}")
        version = step.options.get("ta_version")
        if version is not None and (not isinstance(version, int) or isinstance(version, bool)
                                    or not 0 <= version <= 0xFFFFFFFF):
            raise InputError(f"step '{step.id}': ta_version must be a 32-bit unsigned integer")
        if not step.inputs:
            raise InputError(f"step '{step.id}': no TA to sign (give at least one input)")

    def run(self, ctx: StepContext) -> dict:
        if spki_der(ctx.key.public_key()) != spki_der(ctx.cert.public_key()):
            raise InputError(f"step '{ctx.step.id}': the key is not the certificate's")
        algo = ctx.option("algo", "pkcs1")
        version = ctx.option("ta_version")
        records = []
        for role, path in sorted(ctx.inputs.items()):
            payload, in_uuid, in_version = ta.unsigned_input(path.read_bytes())
            found = [u for u in (in_uuid, ta.ta_head_uuid(payload), _uuid_from_name(path.name)) if u is not None]
            if not found:
                raise InputError(f"step '{ctx.step.id}': {path.name} ({role}): no UUID (not a signed TA, no "
                                 ".ta_head section, no <uuid> file name)")
            if len(set(found)) > 1:
                raise InputError(f"step '{ctx.step.id}': {path.name} ({role}): its UUIDs disagree "
                                 f"({', '.join(sorted({str(u) for u in found}))})")
            ta_uuid = found[0]
            ta_version = version if version is not None else (in_version or 0)
            name = f"{ta_uuid}.ta"
            if (ctx.out_dir / name).exists():
                raise InputError(f"step '{ctx.step.id}': two inputs are TA {ta_uuid}")
            signed = ta.sign(payload, ctx.key, ta_uuid, ta_version, algo)
            (ctx.out_dir / name).write_bytes(signed)
            records.append({"file": name, "uuid": str(ta_uuid), "ta_version": ta_version,
                            "algo": ta.ALGO_NAMES[ta.ALGOS[algo]], "input": path.name})
        return {"tas": records}

    def verify(self, ctx: VerifyContext) -> None:
        for record in ctx.record["details"]["tas"]:
            name = record["file"]
            data = (ctx.out_dir / name).read_bytes()
            expected = _uuid_from_name(name)
            if expected is None or name != f"{expected}.ta":
                raise VerificationError(f"{name}: a TA's file name is <uuid>.ta (tee-supplicant loads it by UUID)")
            sig_size = ta.parse(data).sig_size
            # OP-TEE's TA keys are RSA; a key of another size did not sign it.
            rsa_certs = [c for c in ctx.certs if isinstance(key := c.public_key(), rsa.RSAPublicKey)
                         and (key.key_size + 7) // 8 == sig_size]
            result = ctx.first_trusted(lambda cert: ta.verify(data, cert.public_key(), expected_uuid=expected),
                                       f"{name}: no trusted certificate's key verifies it", certs=rsa_certs,
                                       none_tried="none holds an RSA key of its size")
            if str(result.ta.uuid) != record["uuid"] or result.ta.ta_version != record["ta_version"]:
                raise VerificationError(f"{name}: UUID or ta_version differ from the manifest's")
