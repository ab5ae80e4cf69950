"""segway-kmsctl: a thin command-line shell over the segway-kms gRPC API."""
from __future__ import annotations

import hashlib
import json
import os
import sys
from pathlib import Path

import click
import grpc

from segway_kms.api import kms_pb2 as pb
from segway_kms.errors import KmsError
from segway_kms.fsutil import atomic_write

TIMEOUT = 60
# The ranges of the request fields: the daemon judges the values, but protobuf refuses to carry a value
# outside its field's type (a ValueError traceback in the client).
UINT32 = click.IntRange(0, 2**32 - 1)
INT64 = click.IntRange(-2**63, 2**63 - 1)


def _write(path: str | None, data: bytes) -> None:
    if path in (None, "-"):
        sys.stdout.buffer.write(data)
    else:
        atomic_write(path, data)


def _read(path: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise click.ClickException(f"cannot read {path}: {exc.strerror}") from None


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--socket", envvar="SEGWAY_KMS_SOCKET", help="Unix socket of the daemon.")
@click.option("--address", envvar="SEGWAY_KMS_ADDRESS", help="host:port of the mTLS listener.")
@click.option("--ca", "ca_file", envvar="SEGWAY_KMS_CA", help="CA certificate of the KMS (mTLS).")
@click.option("--cert", envvar="SEGWAY_KMS_CERT", help="Client certificate (mTLS).")
@click.option("--key", "key_file", envvar="SEGWAY_KMS_KEY", help="Client private key (mTLS).")
@click.option("--server-name", envvar="SEGWAY_KMS_SERVER_NAME", help="Expected server name (mTLS).")
@click.pass_context
def main(ctx, socket, address, ca_file, cert, key_file, server_name):
    """Manage keys, certificates, attestation and the audit log of a segway-kms daemon."""
    ctx.obj = dict(socket=socket, address=address, ca=ca_file, cert=cert, key=key_file, server_name=server_name)


def _stub(ctx):
    from segway_kms.cli.client import channel, stub
    return stub(channel(**ctx.obj))


def _call(ctx, method: str, request):
    return getattr(_stub(ctx), method)(request, timeout=TIMEOUT)


def _key_line(k) -> str:
    return (f"{k.name}\t{pb.KeyAlgorithm.Name(k.algorithm)}\t{pb.KeyState.Name(k.state)}\t"
            f"v{k.primary_version}\t{','.join(k.usage)}")


# -- keys ---------------------------------------------------------------------------------------------------
@main.group()
def key():
    """Key lifecycle: generate, list, sign, verify, rotate, disable, destroy."""


@key.command("generate")
@click.argument("name")
@click.option("--algorithm", type=click.Choice(["EC_P256", "EC_P384", "RSA_2048", "RSA_3072"]), default="EC_P256")
@click.option("--usage", multiple=True, type=click.Choice(["sign", "verify"]))
@click.option("--expires", type=INT64, default=0, help="Unix time after which the key refuses to sign.")
@click.pass_context
def key_generate(ctx, name, algorithm, usage, expires):
    """Generate a non-exportable key NAME (tenant/name)."""
    click.echo(_key_line(_call(ctx, "GenerateKey", pb.GenerateKeyRequest(
        name=name, algorithm=pb.KeyAlgorithm.Value(algorithm), usage=list(usage), expires=expires))))


@key.command("list")
@click.argument("tenant")
@click.pass_context
def key_list(ctx, tenant):
    """List the keys of TENANT."""
    for k in _call(ctx, "ListKeys", pb.ListKeysRequest(tenant=tenant)).keys:
        click.echo(_key_line(k))


@key.command("public")
@click.argument("name")
@click.option("--version", type=UINT32, default=0)
@click.option("-o", "--output", default="-")
@click.pass_context
def key_public(ctx, name, version, output):
    """Write the public key (PEM)."""
    _write(output, _call(ctx, "GetPublicKey", pb.KeyRef(name=name, version=version)).public_key_pem.encode())


def _digest(input_path, digest_hex, hash_name) -> bytes:
    if bool(input_path) == bool(digest_hex):
        raise click.ClickException("give exactly one of --input FILE or --digest HEX")
    if digest_hex:
        try:
            return bytes.fromhex(digest_hex)
        except ValueError:
            raise click.ClickException("--digest is not hexadecimal") from None
    return hashlib.new(hash_name, _read(input_path)).digest()


_SCHEME = click.Choice(["default", "pkcs1v15", "pss", "ecdsa"])
_SCHEMES = {"default": pb.SCHEME_DEFAULT, "pkcs1v15": pb.RSA_PKCS1V15, "pss": pb.RSA_PSS, "ecdsa": pb.ECDSA}


@key.command("sign")
@click.argument("name")
@click.option("--input", "input_path", help="File to hash and sign.")
@click.option("--digest", "digest_hex", help="Precomputed digest (hex).")
@click.option("--hash", "hash_name", type=click.Choice(["sha256", "sha384", "sha512"]), default="sha256")
@click.option("--scheme", type=_SCHEME, default="default")
@click.option("-o", "--output", required=True, help="Signature file (DER for ECDSA).")
@click.pass_context
def key_sign(ctx, name, input_path, digest_hex, hash_name, scheme, output):
    """Sign a file's digest with key NAME."""
    digest = _digest(input_path, digest_hex, hash_name)
    resp = _call(ctx, "Sign", pb.SignRequest(key=pb.KeyRef(name=name), digest=digest, scheme=_SCHEMES[scheme]))
    _write(output, resp.signature)


@key.command("verify")
@click.argument("name")
@click.argument("signature")
@click.option("--input", "input_path")
@click.option("--digest", "digest_hex")
@click.option("--hash", "hash_name", type=click.Choice(["sha256", "sha384", "sha512"]), default="sha256")
@click.option("--scheme", type=_SCHEME, default="default")
@click.option("--version", type=UINT32, default=0)
@click.pass_context
def key_verify(ctx, name, signature, input_path, digest_hex, hash_name, scheme, version):
    """Verify SIGNATURE with key NAME; exit 1 when it does not verify."""
    resp = _call(ctx, "Verify", pb.VerifyRequest(key=pb.KeyRef(name=name, version=version),
                                                 digest=_digest(input_path, digest_hex, hash_name),
                                                 signature=_read(signature), scheme=_SCHEMES[scheme]))
    click.echo("valid" if resp.valid else "INVALID")
    sys.exit(0 if resp.valid else 1)


for _op, _method, _help in (("rotate", "RotateKey", "Add a new primary version; old ones stay for verification."),
                            ("disable", "DisableKey", "Refuse signing with the key."),
                            ("enable", "EnableKey", "Re-enable a disabled key."),
                            ("destroy", "DestroyKey", "Destroy all versions of the key for good."),
                            ("show", "GetKey", "Show the key's metadata.")):
    def _make(method):
        @click.argument("name")
        @click.pass_context
        def cmd(ctx, name):
            click.echo(_key_line(_call(ctx, method, pb.KeyRef(name=name))))
        return cmd
    key.command(_op, help=_help)(_make(_method))


# -- CA -----------------------------------------------------------------------------------------------------
@main.group()
def ca():
    """The mini-CA: initialise, sign CSRs, issue, revoke, CRL."""


@ca.command("init")
@click.option("--cn", "common_name", required=True)
@click.option("--algorithm", type=click.Choice(["EC_P256", "EC_P384", "RSA_2048", "RSA_3072"]), default="EC_P256")
@click.option("--days", type=UINT32, default=3650)
@click.option("--external-root", is_flag=True, help="Produce a CSR for an external root instead of self-signing.")
@click.option("-o", "--output", default="-", help="CA certificate (or CSR) PEM.")
@click.pass_context
def ca_init(ctx, common_name, algorithm, days, external_root, output):
    """Create the CA key in the backend and a self-signed root (or a CSR)."""
    resp = _call(ctx, "InitCa", pb.InitCaRequest(common_name=common_name, algorithm=pb.KeyAlgorithm.Value(algorithm),
                                                 validity_days=days, external_root=external_root))
    _write(output, (resp.csr_pem or resp.certificate_pem).encode())


@ca.command("install")
@click.argument("certificate")
@click.option("--chain", help="PEM file with the issuer chain.")
@click.pass_context
def ca_install(ctx, certificate, chain):
    """Install the CA certificate issued by an external root."""
    _call(ctx, "InstallCaCertificate", pb.InstallCaCertificateRequest(
        certificate_pem=_read(certificate).decode(), chain_pem=_read(chain).decode() if chain else ""))
    click.echo("installed")


@ca.command("cert")
@click.option("-o", "--output", default="-")
@click.pass_context
def ca_cert(ctx, output):
    """Write the CA certificate and its chain (PEM)."""
    resp = _call(ctx, "GetCaCertificate", pb.Empty())
    _write(output, (resp.certificate_pem + resp.chain_pem).encode())


def _write_cert(resp, output, chain_output):
    _write(output, resp.certificate_pem.encode())
    if chain_output:
        _write(chain_output, resp.chain_pem.encode())
    click.echo(f"serial {resp.serial_hex}", err=True)


@ca.command("sign-csr")
@click.argument("csr")
@click.option("--profile", required=True)
@click.option("--days", type=UINT32, default=0)
@click.option("-o", "--output", default="-")
@click.option("--chain-output")
@click.pass_context
def ca_sign_csr(ctx, csr, profile, days, output, chain_output):
    """Issue a certificate for a CSR under a profile."""
    resp = _call(ctx, "SignCsr", pb.SignCsrRequest(csr_pem=_read(csr).decode(errors="replace"), profile=profile,
                                                   validity_days=days))
    _write_cert(resp, output, chain_output)


@ca.command("issue")
@click.argument("key_name")
@click.option("--profile", required=True)
@click.option("--algorithm", type=click.Choice(["EC_P256", "EC_P384", "RSA_2048", "RSA_3072"]), default="EC_P256")
@click.option("--cn", "common_name", default="")
@click.option("--dns", multiple=True)
@click.option("--email", multiple=True)
@click.option("--days", type=UINT32, default=0)
@click.option("-o", "--output", default="-")
@click.pass_context
def ca_issue(ctx, key_name, profile, algorithm, common_name, dns, email, days, output):
    """Generate KEY_NAME in the backend and issue a certificate for it."""
    resp = _call(ctx, "IssueCertificate", pb.IssueRequest(
        key_name=key_name, algorithm=pb.KeyAlgorithm.Value(algorithm), profile=profile, common_name=common_name,
        dns_names=list(dns), emails=list(email), validity_days=days))
    _write_cert(resp.certificate, output, None)


@ca.command("revoke")
@click.argument("serial")
@click.option("--reason", default="unspecified")
@click.pass_context
def ca_revoke(ctx, serial, reason):
    """Revoke the certificate with SERIAL (hex)."""
    _call(ctx, "Revoke", pb.RevokeRequest(serial_hex=serial, reason=reason))
    click.echo(f"revoked {serial}")


@ca.command("crl")
@click.option("-o", "--output", default="-")
@click.option("--der", is_flag=True)
@click.pass_context
def ca_crl(ctx, output, der):
    """Write the current CRL."""
    resp = _call(ctx, "GetCrl", pb.Empty())
    _write(output, resp.crl_der if der else resp.crl_pem.encode())


# -- attestation --------------------------------------------------------------------------------------------
@main.group()
def attest():
    """TPM key attestation: fetch evidence from the daemon, verify it on a host."""


@attest.command("key")
@click.argument("name")
@click.option("--pcrs", default="0,1,2,3,4,5,6,7", help="Comma-separated SHA-256 PCR indices.")
@click.option("-o", "--output", default="-", help="Evidence file (JSON).")
@click.pass_context
def attest_key(ctx, name, pcrs, output):
    """Certify key NAME with the AK and quote the PCRs, under a fresh nonce."""
    nonce = os.urandom(16)
    pcr_list = [int(p) for p in pcrs.split(",") if p.strip()]
    stub = _stub(ctx)
    resp = stub.Attest(pb.AttestRequest(key=pb.KeyRef(name=name), nonce=nonce, pcrs=pcr_list), timeout=TIMEOUT)
    public = stub.GetPublicKey(pb.KeyRef(name=name), timeout=TIMEOUT)
    doc = {f.name: getattr(resp, f.name).hex() for f in pb.AttestResponse.DESCRIPTOR.fields if f.name != "pcr_values"}
    doc["pcr_values"] = {str(k): v.hex() for k, v in resp.pcr_values.items()}
    doc["pcrs"] = pcr_list
    doc["key_name"] = name
    doc["key_public_der"] = public.public_key_der.hex()
    _write(output, json.dumps(doc, indent=1).encode() + b"\n")


def _fail_on(problems: list[str]) -> None:
    """Print each problem a verifier found as a FAIL line and exit 1 if there was any."""
    for p in problems:
        click.echo(f"FAIL: {p}")
    if problems:
        sys.exit(1)


def load_evidence(path: str) -> tuple[dict, bytes, bytes, list[int]]:
    try:
        doc = json.loads(_read(path))
        evidence = {k: bytes.fromhex(v) for k, v in doc.items() if k not in ("pcr_values", "pcrs", "key_name")}
        evidence["pcr_values"] = {int(k): bytes.fromhex(v) for k, v in doc["pcr_values"].items()}
        return evidence, evidence["nonce"], evidence["key_public_der"], [int(p) for p in doc["pcrs"]]
    except (ValueError, KeyError, TypeError, AttributeError):
        raise click.ClickException(f"{path} is not an evidence file written by 'attest key'") from None


@attest.command("verify")
@click.argument("evidence")
@click.option("--ek-ca", help="PEM bundle of the TPM vendor CA(s); requires and checks the EK certificate chain.")
@click.option("--ak", "ak_pem", help="PEM of the attestation key pinned at enrolment.")
def attest_verify(evidence, ek_ca, ak_pem):
    """Check attestation EVIDENCE offline: signatures, nonce, key name, PCR digest, EK chain."""
    from segway_kms.attestation.verify import verify_evidence

    ev, nonce, key_der, pcrs = load_evidence(evidence)
    try:
        problems = verify_evidence(ev, nonce, key_der, pcrs, ek_ca_bundle=_read(ek_ca) if ek_ca else None,
                                   pinned_ak_pem=_read(ak_pem) if ak_pem else None)
    except (ValueError, TypeError) as exc:
        raise click.ClickException(f"{evidence}: malformed evidence ({exc})") from None
    _fail_on(problems)
    click.echo("attestation OK")


@attest.command("enroll")
@click.argument("evidence")
@click.option("--ek-ca", required=True, help="PEM bundle of the TPM vendor CA(s).")
@click.option("-o", "--output", required=True, help="Where to write the enrolled AK (PEM).")
@click.pass_context
def attest_enroll(ctx, evidence, ek_ca, output):
    """Check EVIDENCE, then prove with MakeCredential/ActivateCredential that its AK shares a TPM with the
    certified EK; write the AK for `attest verify --ak`."""
    from segway_kms.attestation import enroll
    from segway_kms.attestation.verify import verify_evidence

    ev, nonce, key_der, pcrs = load_evidence(evidence)
    if not ev.get("ek_public_area") or not ev.get("ek_certificate_der"):
        raise click.ClickException("the evidence carries no EK certificate: nothing to enrol against")
    problems = verify_evidence(ev, nonce, key_der, pcrs, ek_ca_bundle=_read(ek_ca))
    _fail_on(problems)
    secret, blob, encrypted = enroll.challenge(ev)
    answer = _call(ctx, "ActivateCredential", pb.ActivateCredentialRequest(credential_blob=blob,
                                                                         encrypted_secret=encrypted)).secret
    if not enroll.answer_matches(secret, answer):
        click.echo("FAIL: the TPM did not recover the credential: the AK is not bound to the EK")
        sys.exit(1)
    _write(output, enroll.ak_pem(ev))
    click.echo("AK enrolled", err=True)


# -- audit, random, health ----------------------------------------------------------------------------------
@main.group()
def audit():
    """Export and verify the signed, hash-chained audit log."""


ANCHOR_FIELDS = ("nv_public_area", "certify_info", "certify_signature", "ak_public_area")


@audit.command("export")
@click.option("-o", "--output", required=True, help="JSON-lines file.")
@click.option("--public-key-output", help="Where to write the audit public key (PEM).")
@click.option("--anchor-output", help="Also fetch the TPM anchor, certified for a fresh nonce (JSON).")
@click.pass_context
def audit_export(ctx, output, public_key_output, anchor_output):
    """Export the whole audit log."""
    stub, entries, seq = _stub(ctx), [], 1
    nonce = os.urandom(16) if anchor_output else b""
    while True:
        resp = stub.ExportAudit(pb.AuditExportRequest(from_seq=seq, anchor_nonce=nonce), timeout=TIMEOUT)
        entries += resp.entries
        if not resp.next_seq:
            break
        seq = resp.next_seq
    _write(output, "".join(e + "\n" for e in entries).encode())
    if public_key_output:
        _write(public_key_output, resp.audit_public_key_pem.encode())
    if anchor_output:
        doc = {"nonce": nonce.hex(), "nv_index": resp.anchor.nv_index}
        doc.update({f: getattr(resp.anchor, f).hex() for f in ANCHOR_FIELDS})
        _write(anchor_output, json.dumps(doc, indent=1).encode() + b"\n")
    click.echo(f"{len(entries)} entries", err=True)


def load_anchor(path: str) -> tuple[dict, bytes]:
    try:
        doc = json.loads(_read(path))
        anchor = {f: bytes.fromhex(doc[f]) for f in ANCHOR_FIELDS}
        anchor["nv_index"] = int(doc["nv_index"])
        return anchor, bytes.fromhex(doc["nonce"])
    except (ValueError, KeyError, TypeError, AttributeError):
        raise click.ClickException(f"{path} is not an anchor file written by 'audit export --anchor-output'") from None


@audit.command("verify")
@click.argument("log_file")
@click.option("--public-key", required=True, help="Audit public key (PEM).")
@click.option("--head", help="Hash of the last entry known from an earlier export (detects truncation).")
@click.option("--anchor", "anchor_file", help="TPM anchor from 'audit export --anchor-output' (detects truncation "
              "and rollback); needs --ak.")
@click.option("--ak", "ak_pem", help="The attestation key enrolled with 'attest enroll' (PEM).")
def audit_verify(log_file, public_key, head, anchor_file, ak_pem):
    """Check the chain, the signatures and the sequence of an exported audit log."""
    from segway_kms.audit.verify import verify_anchor, verify_log

    if bool(anchor_file) != bool(ak_pem):
        raise click.UsageError("--anchor and --ak go together: an anchor is only as good as the pinned AK")
    lines = _read(log_file).decode(errors="replace").splitlines()
    try:
        problems = verify_log(lines, _read(public_key), expect_head=head)
    except ValueError as exc:
        raise click.ClickException(f"cannot use the public key: {exc}") from None
    if anchor_file:
        anchor, nonce = load_anchor(anchor_file)
        try:
            problems += verify_anchor(lines, anchor, nonce, _read(ak_pem))
        except (ValueError, TypeError) as exc:
            raise click.ClickException(f"{anchor_file}: malformed anchor ({exc})") from None
    _fail_on(problems)
    click.echo("audit log OK" + (" (anchored in the TPM)" if anchor_file else ""))


@main.command("random")
@click.argument("length", type=UINT32)
@click.pass_context
def random_cmd(ctx, length):
    """Print LENGTH random bytes from the backend (hex)."""
    click.echo(_call(ctx, "GetRandom", pb.RandomRequest(length=length)).data.hex())


@main.command("health")
@click.pass_context
def health_cmd(ctx):
    """Query the standard gRPC health service; exit 1 unless SERVING."""
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    from segway_kms.cli.client import channel
    resp = health_pb2_grpc.HealthStub(channel(**ctx.obj)).Check(
        health_pb2.HealthCheckRequest(service="segway.kms.v1.Kms"), timeout=TIMEOUT)
    name = health_pb2.HealthCheckResponse.ServingStatus.Name(resp.status)
    click.echo(name)
    sys.exit(0 if name == "SERVING" else 1)


def run() -> None:
    try:
        main(standalone_mode=True)
    except grpc.RpcError as exc:
        click.echo(f"segway-kmsctl: {exc.code().name}: {exc.details()}", err=True)
        sys.exit(1)
    except KmsError as exc:
        click.echo(f"segway-kmsctl: {exc}", err=True)
        sys.exit(2)
