"""Fixed-seed fuzzing of the gRPC API against a running segway-kmsd.

A few hundred malformed requests (boundary integers, unknown enum values, empty and oversized strings and
bytes, mutated PEM, bytes that are no protobuf at all) to every method of the service and to the health
service: none may answer INTERNAL or UNKNOWN (nor UNAVAILABLE or a timeout: the backend is healthy), every
error detail is one short line, the daemon logs no traceback and still serves afterwards.

The requests are built from the message descriptors, so a field added to the API is fuzzed without a
change here. A longer run: KMS_FUZZ_CASES=6000 (and another seed with KMS_FUZZ_SEED=<n>).
"""
from __future__ import annotations

import base64
import hashlib
import os
import random
import time

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from google.protobuf.descriptor import FieldDescriptor
from grpc_health.v1 import health_pb2, health_pb2_grpc

from segway_kms.api import kms_pb2 as pb

SEED = int(os.environ.get("KMS_FUZZ_SEED", "1207"))
CASES = int(os.environ.get("KMS_FUZZ_CASES", "600"))
TIME_LIMIT = 60.0 * max(1.0, CASES / 600)
FORBIDDEN = {grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN, grpc.StatusCode.UNAVAILABLE,
             grpc.StatusCode.DEADLINE_EXCEEDED}
MAX_DETAIL = 512
SERVICE = pb.DESCRIPTOR.services_by_name["Kms"]

NOW = int(time.time())
U32 = [0, 1, 2, 3, 4, 5, 7, 8, 23, 24, 32, 33, 64, 255, 1024, 1025, 36500, 36501, 2**31 - 1, 2**31, 2**32 - 1]
U64 = U32 + [2**53, 2**63 - 1, 2**63, 2**64 - 1]
I64 = [-2**63, -1, 0, 1, NOW - 10, NOW + 3600, 253402300799, 253402300800, 2**31, 2**63 - 1]
I32 = [-2**31, -1, 0, 1, 2, 3, 4, 5, 99, 2**31 - 1]
LENGTHS = [1, 2, 63, 64, 65, 127, 128, 129, 192, 193, 253, 254, 1000, 10_000, 70_000]
STRINGS = ["", "acme/fz-base", "acme/", "/fz", "acme//x", "acme/fz-base\n", " acme/x", "ACME/x", "_system/ca",
           "_system/audit", "acme/ü", "acme/\x00", "acme/..", "../../etc/passwd", "acme/%s%n", "acme", "*", "ca",
           "audit", "user", "server", "keyCompromise", "00", "0" * 41, "f" * 40, "-1", "fz.acme.example",
           "fz@acme.example", "a@b@c", "\u202e", "\ud7ff", "\U0001f600" * 40, "line1\nline2", "'\"\\"]
BYTE_LENGTHS = [0, 1, 7, 8, 31, 32, 33, 48, 64, 65, 512, 4096, 70_000]


def _string(rng: random.Random, base: str = "") -> str:
    kind = rng.randrange(8)
    if kind == 6 and base:  # the valid value stretched to a boundary length
        return (base * 70_000)[:rng.choice(LENGTHS)]
    if kind == 7 and base:  # the valid value with one odd character in it
        i = rng.randrange(len(base) + 1)
        return base[:i] + rng.choice(["\n", "\x00", "/", " ", "A", "_", "é", "\u202e", "*", "%"]) + base[i:]
    if kind <= 1 or kind >= 6:
        return rng.choice(STRINGS)
    if kind == 2:
        return rng.choice(["acme/", "a", "acme/x", "é", "\n"]) * rng.choice(LENGTHS)
    if kind == 3:
        return "".join(chr(rng.randrange(32, 127)) for _ in range(rng.choice(LENGTHS[:9])))
    if kind == 4:  # any code point a protobuf string may carry
        return "".join(chr(rng.choice([rng.randrange(0, 0xD800), rng.randrange(0xE000, 0x110000)]))
                       for _ in range(rng.choice(LENGTHS[:9])))
    return "acme/" + rng.choice(["fz-base", "fz-victim", "fz-rotated"]) + rng.choice(["", "x", "-1", "\t"])


def _bytes(rng: random.Random) -> bytes:
    n = rng.choice(BYTE_LENGTHS)
    return rng.choice([bytes(n), b"\xff" * n, rng.randbytes(n)])


def _integer(rng: random.Random, values: list[int]) -> int:
    """A boundary value of the type: the extremes of its range half of the time."""
    return rng.choice(values[-3:] + values[:1] if rng.random() < 0.5 else values)


def _scalar(rng: random.Random, field, base=None):
    t = field.type
    if t == FieldDescriptor.TYPE_STRING:
        return _string(rng, base or "")
    if t == FieldDescriptor.TYPE_BYTES:
        return _bytes(rng)
    if t == FieldDescriptor.TYPE_BOOL:
        return rng.random() < 0.5
    if t == FieldDescriptor.TYPE_UINT32:
        return _integer(rng, U32)
    if t == FieldDescriptor.TYPE_UINT64:
        return _integer(rng, U64)
    if t == FieldDescriptor.TYPE_INT64:
        return _integer(rng, I64)
    if t in (FieldDescriptor.TYPE_ENUM, FieldDescriptor.TYPE_INT32):
        return _integer(rng, I32)
    raise AssertionError(f"no generator for field {field.full_name} (type {t}): add one")


def _is_repeated(field) -> bool:
    # protobuf 7 has is_repeated and no label; the 4.25 of scarthgap has only label
    if hasattr(field, "is_repeated"):
        return field.is_repeated
    return field.label == FieldDescriptor.LABEL_REPEATED


def _pem_mutation(rng: random.Random, pem: str) -> str:
    """A PEM block whose DER is damaged: bit flips, truncation, a duplicated or a removed slice."""
    body = "".join(line for line in pem.splitlines() if not line.startswith("-----"))
    der = bytearray(base64.b64decode(body))
    kind = rng.randrange(4)
    if kind == 0:
        for _ in range(rng.randint(1, 4)):
            der[rng.randrange(len(der))] ^= 1 << rng.randrange(8)
    elif kind == 1:
        der = der[:rng.randrange(len(der))]
    elif kind == 2:
        i = rng.randrange(len(der))
        der[i:i] = der[i:i + rng.randint(1, 64)]
    else:
        i = rng.randrange(len(der))
        del der[i:i + rng.randint(1, 16)]
    label = pem.splitlines()[0][len("-----BEGIN "):-len("-----")]
    return (f"-----BEGIN {label}-----\n" + base64.encodebytes(bytes(der)).decode()
            + f"-----END {label}-----\n")


def _set(rng: random.Random, msg, field) -> None:
    """Give one field of msg a random value (for a message field: random values in some of its fields)."""
    if field.message_type is not None:
        if _is_repeated(field):
            return  # no request has repeated message fields
        sub = getattr(msg, field.name)
        for subfield in sub.DESCRIPTOR.fields:
            if rng.random() < 0.6:
                _set(rng, sub, subfield)
        sub.SetInParent()
        return
    if _is_repeated(field):
        values = getattr(msg, field.name)
        bases = list(values)
        del values[:]
        n = rng.choice([0, 1, 2, 3, 8, 30, 200])
        values.extend(_scalar(rng, field, rng.choice(bases) if bases else None) for _ in range(n))
        return
    base = getattr(msg, field.name)
    if field.name.endswith("_pem") and base and rng.random() < 0.7:
        setattr(msg, field.name, _pem_mutation(rng, base))
    else:
        setattr(msg, field.name, _scalar(rng, field, base))


def _request(rng: random.Random, method, bases: dict):
    """A mutation of the method's valid base request (most cases) or a request made up from nothing."""
    base = bases[method.name]
    msg = type(base)()
    if rng.random() < 0.75:
        msg.CopyFrom(base)
        fields = list(msg.DESCRIPTOR.fields)
        if fields:
            for field in rng.sample(fields, k=min(len(fields), rng.choice([1, 1, 1, 2, 3]))):
                _set(rng, msg, field)
    else:
        for field in msg.DESCRIPTOR.fields:
            if rng.random() < 0.7:
                _set(rng, msg, field)
    return msg


def _raw(rng: random.Random, bases: dict, method) -> bytes:
    """Bytes that should be a serialized request: random ones or a damaged valid serialization."""
    data = bytearray(bases[method.name].SerializeToString())
    kind = rng.randrange(4)
    if kind == 0 or not data:
        return rng.randbytes(rng.choice([1, 2, 5, 16, 100]))
    if kind == 1:
        for _ in range(rng.randint(1, 3)):
            data[rng.randrange(len(data))] ^= 1 << rng.randrange(8)
        return bytes(data)
    if kind == 2:
        return bytes(data[:rng.randrange(len(data))])
    # a string field with bytes that are not UTF-8, or a length running past the end
    return bytes(data) + rng.choice([b"\x0a\x03\xff\xfe\xfd", b"\x0a\x7f", b"\x12\xff\xff\xff\xff\x0f", b"\x08"])


def _csr(cn: str) -> str:
    key = ec.generate_private_key(ec.SECP256R1())
    return (x509.CertificateSigningRequestBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)]))
            .add_extension(x509.SubjectAlternativeName([x509.RFC822Name(f"{cn}@acme.example")]), critical=False)
            .sign(key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM).decode())


def _bases(admin) -> dict:
    """A valid request for every method; the fuzzer mutates them."""
    digest = hashlib.sha256(b"fuzz").digest()
    signature = admin.Sign(pb.SignRequest(key=pb.KeyRef(name="acme/fz-base"), digest=digest)).signature
    ca = admin.GetCaCertificate(pb.Empty())
    key = pb.KeyRef(name="acme/fz-base")
    return {
        "GenerateKey": pb.GenerateKeyRequest(name="acme/fz-new", algorithm=pb.EC_P256, usage=["sign", "verify"]),
        "ListKeys": pb.ListKeysRequest(tenant="acme"),
        "GetKey": key,
        "GetPublicKey": pb.KeyRef(name="acme/fz-base", version=1),
        "Sign": pb.SignRequest(key=key, digest=digest, scheme=pb.ECDSA),
        "Verify": pb.VerifyRequest(key=key, digest=digest, signature=signature),
        "RotateKey": pb.KeyRef(name="acme/fz-rotated"),
        "DisableKey": pb.KeyRef(name="acme/fz-victim"),
        "EnableKey": pb.KeyRef(name="acme/fz-victim"),
        "DestroyKey": pb.KeyRef(name="acme/fz-victim"),
        "InitCa": pb.InitCaRequest(common_name="Fuzz CA", algorithm=pb.EC_P256, validity_days=10),
        "InstallCaCertificate": pb.InstallCaCertificateRequest(certificate_pem=ca.certificate_pem,
                                                               chain_pem=ca.certificate_pem),
        "GetCaCertificate": pb.Empty(),
        "SignCsr": pb.SignCsrRequest(csr_pem=_csr("fuzz"), profile="user", validity_days=10),
        "IssueCertificate": pb.IssueRequest(key_name="acme/fz-issued", algorithm=pb.EC_P256, profile="user",
                                            common_name="fuzz", emails=["fuzz@acme.example"], validity_days=10),
        "Revoke": pb.RevokeRequest(serial_hex="abcdef0123456789", reason="keyCompromise"),
        "GetCrl": pb.Empty(),
        "Attest": pb.AttestRequest(key=key, nonce=b"n" * 16, pcrs=[0, 7]),
        "ActivateCredential": pb.ActivateCredentialRequest(credential_blob=b"\x00\x02ab", encrypted_secret=b"\x00"),
        "GetRandom": pb.RandomRequest(length=16),
        "ExportAudit": pb.AuditExportRequest(from_seq=1, limit=5, anchor_nonce=b"a" * 16),
    }


def _health(daemon, group="bin"):
    with grpc.insecure_channel(f"unix:{daemon.sockets[group]}") as ch:
        return health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(service="segway.kms.v1.Kms"),
                                                    timeout=30).status


@pytest.mark.slow
def test_fuzzed_requests_never_fail_internally(backend_daemon):
    daemon = backend_daemon
    admin = daemon.stub("root")
    for name in ("acme/fz-base", "acme/fz-victim", "acme/fz-rotated"):
        admin.GenerateKey(pb.GenerateKeyRequest(name=name, algorithm=pb.EC_P256))
    bases = _bases(admin)
    assert set(bases) == {m.name for m in SERVICE.methods}
    rng = random.Random(SEED)
    channels = {g: grpc.insecure_channel(f"unix:{daemon.sockets[g]}",
                                         options=[("grpc.max_send_message_length", 8 * 1024 * 1024)])
                for g in ("root", "bin", "adm")}
    outcomes: dict[str, int] = {}
    bad = []
    started = time.monotonic()
    try:
        for case in range(CASES):
            channel = channels[rng.choice(["root"] * 6 + ["bin", "adm"])]
            if rng.random() < 0.05:  # the health service
                path, request_bytes = "/grpc.health.v1.Health/Check", rng.choice([
                    health_pb2.HealthCheckRequest(service=_string(rng)).SerializeToString(), rng.randbytes(9)])
                what = "Health.Check"
            else:
                method = rng.choice(SERVICE.methods)
                path, what = f"/{SERVICE.full_name}/{method.name}", method.name
                if rng.random() < 0.15:
                    request_bytes = _raw(rng, bases, method)
                else:
                    request_bytes = _request(rng, method, bases).SerializeToString()
            call = channel.unary_unary(path)  # bytes in, bytes out: no client-side parsing
            try:
                call(request_bytes, timeout=30)
                code, details = grpc.StatusCode.OK, ""
            except grpc.RpcError as exc:
                code, details = exc.code(), exc.details() or ""
            outcomes[code.name] = outcomes.get(code.name, 0) + 1
            if code in FORBIDDEN or len(details) > MAX_DETAIL or "\n" in details:
                bad.append(f"case {case} {what} ({len(request_bytes)} bytes): {code.name} {details[:200]!r}")
        elapsed = time.monotonic() - started
    finally:
        for ch in channels.values():
            ch.close()
    assert not bad, f"{len(bad)} bad answers (outcomes {outcomes}):\n" + "\n".join(bad[:20])
    assert elapsed < TIME_LIMIT, f"{CASES} cases took {elapsed:.1f} s"
    assert outcomes.get("INVALID_ARGUMENT", 0) > CASES // 4, outcomes  # the fuzzer reached the checks
    log = daemon.log.read_text()
    assert "Traceback" not in log, log[-4000:]
    assert not [line for line in log.splitlines() if line.startswith(("ERROR ", "CRITICAL "))], log[-4000:]
    assert daemon.proc.poll() is None
    assert _health(daemon) == health_pb2.HealthCheckResponse.SERVING
    # the fuzzer may have destroyed any key it could name: sign with a new one
    admin.GenerateKey(pb.GenerateKeyRequest(name="acme/after-fuzz", algorithm=pb.EC_P256), timeout=30)
    digest = hashlib.sha256(b"after the fuzz").digest()
    assert admin.Sign(pb.SignRequest(key=pb.KeyRef(name="acme/after-fuzz"), digest=digest), timeout=30).signature
