"""segway-kmsctl: a thin command-line shell over the segway-kms gRPC API."""
from __future__ import annotations

import hashlib
import json
import os
import sys
import time
from pathlib import Path

import click
import grpc

from segway_kms.api import kms_pb2 as pb
from segway_kms.errors import KmsError, clip
from segway_kms.fsutil import atomic_write

TIMEOUT = 60
# The ranges of the request fields: the daemon judges the values, but protobuf refuses to carry a value
# outside its field's type (a ValueError traceback in the client).
UINT32 = click.IntRange(0, 2**32 - 1)
INT64 = click.IntRange(-2**63, 2**63 - 1)

# Exit codes: 0 success; 1 the daemon refused or a check failed; 2 bad usage or configuration;
# 3 a signature checked out but nothing tied it to a trust anchor (attest verify without --ek-ca or --ak).
EXIT_NO_ANCHOR = 3

_state = {"json": False}


class CtlError(click.ClickException):
    """A one-line error with a machine-readable code (the "code" of the --json error object)."""

    def __init__(self, message: str, code: str = "ERROR", exit_code: int = 1):
        super().__init__(message)
        self.code = code
        self.exit_code = exit_code


def _json_mode() -> bool:
    return _state["json"]


def _emit(data: dict, text: str | None = None, err_text: str | None = None) -> None:
    """Print ``data`` as one JSON object under --json; otherwise ``text`` on stdout, ``err_text`` on stderr."""
    if _json_mode():
        click.echo(json.dumps(data, sort_keys=True))
        return
    if text is not None:
        click.echo(text)
    if err_text is not None:
        click.echo(err_text, err=True)


def _table(headers: list[str], rows: list[list[str]]) -> str:
    """A plain-text table with a header line, columns padded to their widest cell."""
    widths = [max(len(str(c)) for c in col) for col in zip(headers, *rows)]
    return "\n".join("  ".join(str(c).ljust(w) for c, w in zip(line, widths)).rstrip()
                     for line in [headers, *rows])


force_option = click.option("--force", is_flag=True, help="Overwrite output files that already exist.")


def _check_outputs(force: bool, *paths: str | None) -> None:
    """Refuse, before anything is asked of the daemon, to replace an existing file unless --force."""
    for path in paths:
        if path in (None, "-"):
            continue
        p = Path(path)
        if p.is_dir():
            raise CtlError(f"{path} is a directory", code="INVALID_ARGUMENT", exit_code=2)
        if p.exists() and not force:
            raise CtlError(f"{path} exists: give --force to replace it", code="ALREADY_EXISTS", exit_code=2)


def _write(path: str | None, data: bytes) -> None:
    if path in (None, "-"):
        sys.stdout.buffer.write(data)
        sys.stdout.buffer.flush()
    else:
        try:
            Path(path).parent.mkdir(parents=True, exist_ok=True)
            atomic_write(path, data)
        except OSError as exc:
            raise CtlError(f"cannot write {path}: {exc.strerror}", code="IO_ERROR") from None


def _output(path: str, data: bytes, field: str, summary: dict, binary: bool = False,
            err_text: str | None = None) -> None:
    """Write ``data`` to ``path`` (or stdout for "-"); under --json, stdout carries one JSON object instead,
    with the data in ``field`` when it did not go to a file."""
    if _json_mode():
        if path in (None, "-"):
            summary[field] = data.hex() if binary else data.decode()
        else:
            _write(path, data)
            summary["output"] = path
        _emit(summary)
        return
    _write(path, data)
    if err_text:
        click.echo(err_text, err=True)


def _read(path: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise CtlError(f"cannot read {path}: {exc.strerror}", code="IO_ERROR") from None


_MTLS_OPTIONS = {"ca": "--ca", "cert": "--cert", "key": "--key", "server_name": "--server-name"}


def _explicit(ctx, param: str) -> bool:
    return ctx.get_parameter_source(param) == click.core.ParameterSource.COMMANDLINE


def _choose(opts: dict, explicit: dict) -> dict:
    """Choose the transport: an option on the command line wins over the environment; two explicit
    transports, or two from the environment and none on the command line, are an error, and so are mTLS
    options on the command line when the transport is a Unix socket."""
    given = {n for n in ("socket", "address") if opts[n] and explicit[n]}
    if given == {"socket", "address"}:
        raise CtlError("give either --socket or --address, not both", code="USAGE", exit_code=2)
    if given:
        chosen = given.pop()
    else:
        present = [n for n in ("socket", "address") if opts[n]]
        if len(present) == 2:
            raise CtlError("both SEGWAY_KMS_SOCKET and SEGWAY_KMS_ADDRESS are set: give --socket or --address",
                           code="USAGE", exit_code=2)
        chosen = present[0] if present else None
    if chosen == "socket":
        flags = [flag for n, flag in _MTLS_OPTIONS.items() if opts[n] and explicit[n]]
        if flags:
            where = "--socket" if explicit["socket"] else "SEGWAY_KMS_SOCKET"
            raise CtlError(f"{', '.join(flags)} {'is' if len(flags) == 1 else 'are'} for mTLS with --address, but "
                           f"the transport is the Unix socket from {where}: give --address HOST:PORT", code="USAGE", exit_code=2)
        return dict(socket=opts["socket"])
    if chosen is None:
        raise CtlError("no daemon to talk to: give --socket PATH or --address HOST:PORT (or set "
                       "SEGWAY_KMS_SOCKET)", code="USAGE", exit_code=2)
    return dict(opts, socket=None)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--socket", envvar="SEGWAY_KMS_SOCKET",
              help="Unix socket of the daemon [env SEGWAY_KMS_SOCKET].")
@click.option("--address", envvar="SEGWAY_KMS_ADDRESS",
              help="host:port of the mTLS listener [env SEGWAY_KMS_ADDRESS]; on the command line it wins over "
                   "SEGWAY_KMS_SOCKET.")
@click.option("--ca", "ca_file", envvar="SEGWAY_KMS_CA", help="CA certificate of the KMS (mTLS).")
@click.option("--cert", envvar="SEGWAY_KMS_CERT", help="Client certificate (mTLS).")
@click.option("--key", "key_file", envvar="SEGWAY_KMS_KEY", help="Client private key (mTLS).")
@click.option("--server-name", envvar="SEGWAY_KMS_SERVER_NAME", help="Expected server name (mTLS).")
@click.option("--json", "json_output", is_flag=True,
              help='Machine-readable output: one JSON object on stdout; on failure {"error": ..., "code": ...}.')
@click.pass_context
def main(ctx, socket, address, ca_file, cert, key_file, server_name, json_output):
    """Manage keys, certificates, attestation and the audit log of a segway-kms daemon.

    The transport is --socket PATH (local, principal group:<socket group>) or --address HOST:PORT with
    --ca, --cert and --key (mTLS, principal from the client certificate). Options on the command line win
    over the SEGWAY_KMS_* environment variables; --socket and --address together are an error."""
    _state["json"] = json_output
    ctx.obj = dict(socket=socket, address=address, ca=ca_file, cert=cert, key=key_file, server_name=server_name)
    # remember which values came from the command line, for the transport choice
    ctx.meta["segway_kms.explicit"] = {n: _explicit(ctx, p) for n, p in (
        ("socket", "socket"), ("address", "address"), ("ca", "ca_file"), ("cert", "cert"), ("key", "key_file"),
        ("server_name", "server_name"))}


def _channel(ctx):
    from segway_kms.cli.client import channel
    return channel(**_resolve(ctx))


def _resolve(ctx) -> dict:
    root = ctx.find_root()
    explicit = root.meta["segway_kms.explicit"]
    return _choose(dict(root.obj), explicit)


def _stub(ctx):
    from segway_kms.cli.client import stub
    return stub(_channel(ctx))


def _call(ctx, method: str, request):
    return getattr(_stub(ctx), method)(request, timeout=TIMEOUT)


def _name(enum, value) -> str:
    try:
        return enum.Name(value)
    except ValueError:
        return str(value)


def _key_dict(k) -> dict:
    return {"name": k.name, "algorithm": _name(pb.KeyAlgorithm, k.algorithm), "state": _name(pb.KeyState, k.state),
            "primary_version": k.primary_version, "usage": list(k.usage), "created": k.created,
            "expires": k.expires, "backend": k.backend,
            "versions": [{"version": v.version, "state": _name(pb.KeyState, v.state), "created": v.created}
                         for v in k.versions]}


KEY_HEADERS = ["NAME", "ALGORITHM", "STATE", "VERSION", "USAGE"]


def _key_row(k) -> list[str]:
    return [k.name, _name(pb.KeyAlgorithm, k.algorithm), _name(pb.KeyState, k.state), f"v{k.primary_version}",
            ",".join(k.usage) or "-"]


def _key_out(k) -> None:
    _emit(_key_dict(k), _table(KEY_HEADERS, [_key_row(k)]))


# -- keys ---------------------------------------------------------------------------------------------------
ALGORITHMS = click.Choice(["EC_P256", "EC_P384", "RSA_2048", "RSA_3072"])


@main.group()
def key():
    """Key lifecycle: generate, list, sign, verify, rotate, disable, destroy."""


@key.command("generate")
@click.argument("name")
@click.option("--algorithm", type=ALGORITHMS, default="EC_P256")
@click.option("--usage", multiple=True, type=click.Choice(["sign", "verify"]))
@click.option("--expires", type=INT64, default=0, help="Unix time after which the key refuses to sign.")
@click.pass_context
def key_generate(ctx, name, algorithm, usage, expires):
    """Generate a non-exportable key NAME (tenant/name)."""
    _key_out(_call(ctx, "GenerateKey", pb.GenerateKeyRequest(
        name=name, algorithm=pb.KeyAlgorithm.Value(algorithm), usage=list(usage), expires=expires)))


@key.command("list")
@click.argument("tenant")
@click.pass_context
def key_list(ctx, tenant):
    """List the keys of TENANT (a table; --json for all fields)."""
    keys = list(_call(ctx, "ListKeys", pb.ListKeysRequest(tenant=tenant)).keys)
    _emit({"tenant": tenant, "keys": [_key_dict(k) for k in keys]}, _table(KEY_HEADERS, [_key_row(k) for k in keys]))


@key.command("public")
@click.argument("name")
@click.option("--version", type=UINT32, default=0)
@click.option("-o", "--output", default="-")
@force_option
@click.pass_context
def key_public(ctx, name, version, output, force):
    """Write the public key (PEM)."""
    _check_outputs(force, output)
    resp = _call(ctx, "GetPublicKey", pb.KeyRef(name=name, version=version))
    _output(output, resp.public_key_pem.encode(), "public_key_pem", {"name": name, "version": version})


def _digest(input_path, digest_hex, hash_name) -> bytes:
    if bool(input_path) == bool(digest_hex):
        raise CtlError("give exactly one of --input FILE or --digest HEX", code="USAGE", exit_code=2)
    if digest_hex:
        try:
            return bytes.fromhex(digest_hex)
        except ValueError:
            raise CtlError("--digest is not hexadecimal", code="USAGE", exit_code=2) from None
    return hashlib.new(hash_name, _read(input_path)).digest()


_SCHEME = click.Choice(["default", "pkcs1v15", "pss", "ecdsa"])
_SCHEMES = {"default": pb.SCHEME_DEFAULT, "pkcs1v15": pb.RSA_PKCS1V15, "pss": pb.RSA_PSS, "ecdsa": pb.ECDSA}


@key.command("sign")
@click.argument("name")
@click.option("--input", "input_path", help="File to hash and sign.")
@click.option("--digest", "digest_hex", help="Precomputed digest (hex).")
@click.option("--hash", "hash_name", type=click.Choice(["sha256", "sha384", "sha512"]), default="sha256")
@click.option("--scheme", type=_SCHEME, default="default")
@click.option("-o", "--output", required=True, help="Signature file (DER for ECDSA); - for stdout.")
@force_option
@click.pass_context
def key_sign(ctx, name, input_path, digest_hex, hash_name, scheme, output, force):
    """Sign a file's digest with key NAME."""
    _check_outputs(force, output)
    digest = _digest(input_path, digest_hex, hash_name)
    resp = _call(ctx, "Sign", pb.SignRequest(key=pb.KeyRef(name=name), digest=digest, scheme=_SCHEMES[scheme]))
    _output(output, resp.signature, "signature", {"name": name, "digest": digest.hex()}, binary=True)


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
    if not resp.valid:
        if _json_mode():
            _fail("the signature does not verify", "INVALID_SIGNATURE", 1)
        click.echo("INVALID")
        sys.exit(1)
    _emit({"name": name, "valid": True}, "valid")


for _op, _method, _help in (("rotate", "RotateKey", "Add a new primary version; old ones stay for verification."),
                            ("disable", "DisableKey", "Refuse signing with the key."),
                            ("enable", "EnableKey", "Re-enable a disabled key."),
                            ("destroy", "DestroyKey", "Destroy all versions of the key for good."),
                            ("show", "GetKey", "Show the key's metadata.")):
    def _make(method):
        @click.argument("name")
        @click.pass_context
        def cmd(ctx, name):
            _key_out(_call(ctx, method, pb.KeyRef(name=name)))
        return cmd
    key.command(_op, help=_help)(_make(_method))


# -- CA -----------------------------------------------------------------------------------------------------
@main.group()
def ca():
    """The mini-CA: initialise, sign CSRs, issue, revoke, CRL."""


def _cert_facts(pem: str) -> dict:
    """Subject, serial (hex, as openssl prints it without colons), validity and key of a certificate."""
    from cryptography import x509
    from cryptography.hazmat.primitives.asymmetric import ec, rsa

    cert = x509.load_pem_x509_certificate(pem.encode())
    pub = cert.public_key()
    if isinstance(pub, ec.EllipticCurvePublicKey):
        key_desc = f"EC {pub.curve.name}"
    elif isinstance(pub, rsa.RSAPublicKey):
        key_desc = f"RSA {pub.key_size}"
    else:
        key_desc = type(pub).__name__
    return {"subject": cert.subject.rfc4514_string(), "issuer": cert.issuer.rfc4514_string(),
            "serial": format(cert.serial_number, "X"), "key": key_desc,
            "not_before": cert.not_valid_before_utc.strftime("%Y-%m-%dT%H:%M:%SZ"),
            "not_after": cert.not_valid_after_utc.strftime("%Y-%m-%dT%H:%M:%SZ")}


@ca.command("init")
@click.option("--cn", "common_name", required=True)
@click.option("--algorithm", type=ALGORITHMS, default="EC_P256")
@click.option("--days", type=UINT32, default=3650)
@click.option("--external-root", is_flag=True, help="Produce a CSR for an external root instead of self-signing.")
@click.option("-o", "--output", default="-", help="CA certificate (or CSR) PEM; - for stdout.")
@force_option
@click.pass_context
def ca_init(ctx, common_name, algorithm, days, external_root, output, force):
    """Create the CA key in the backend and a self-signed root (or a CSR); say what was made (on stderr)."""
    _check_outputs(force, output)
    resp = _call(ctx, "InitCa", pb.InitCaRequest(common_name=common_name, algorithm=pb.KeyAlgorithm.Value(algorithm),
                                                 validity_days=days, external_root=external_root))
    where = "standard output" if output in (None, "-") else output
    if external_root:
        summary = {"subject": f"CN={common_name}", "key": algorithm, "external_root": True}
        text = (f"CA key {algorithm} created in the daemon's backend; CSR for CN={common_name} written to {where}: "
                f"have the external root sign it, then 'segway-kmsctl ca install CERT'")
        _output(output, resp.csr_pem.encode(), "csr_pem", summary, err_text=text)
        return
    summary = _cert_facts(resp.certificate_pem)
    summary["external_root"] = False
    text = (f"CA initialised: self-signed root {summary['subject']}, key {summary['key']} in the daemon's backend, "
            f"serial {summary['serial']}, valid {summary['not_before']} to {summary['not_after']}; "
            f"certificate written to {where}")
    _output(output, resp.certificate_pem.encode(), "certificate_pem", summary, err_text=text)


@ca.command("install")
@click.argument("certificate")
@click.option("--chain", help="PEM file with the issuer chain.")
@click.pass_context
def ca_install(ctx, certificate, chain):
    """Install the CA certificate issued by an external root."""
    pem = _read(certificate).decode(errors="replace")
    _call(ctx, "InstallCaCertificate", pb.InstallCaCertificateRequest(
        certificate_pem=pem, chain_pem=_read(chain).decode(errors="replace") if chain else ""))
    _emit({"installed": True, "certificate": certificate}, "installed")


@ca.command("cert")
@click.option("-o", "--output", default="-")
@force_option
@click.pass_context
def ca_cert(ctx, output, force):
    """Write the CA certificate and its chain (PEM)."""
    _check_outputs(force, output)
    resp = _call(ctx, "GetCaCertificate", pb.Empty())
    _output(output, (resp.certificate_pem + resp.chain_pem).encode(), "certificate_pem", _cert_facts(resp.certificate_pem))


def _write_cert(resp, output, chain_output, extra: dict | None = None):
    summary = dict(_cert_facts(resp.certificate_pem), serial=resp.serial_hex.upper(), **(extra or {}))
    if chain_output:
        _write(chain_output, resp.chain_pem.encode())
        summary["chain_output"] = chain_output
    _output(output, resp.certificate_pem.encode(), "certificate_pem", summary, err_text=f"serial {resp.serial_hex}")


@ca.command("sign-csr")
@click.argument("csr")
@click.option("--profile", required=True)
@click.option("--days", type=UINT32, default=0)
@click.option("-o", "--output", default="-")
@click.option("--chain-output")
@force_option
@click.pass_context
def ca_sign_csr(ctx, csr, profile, days, output, chain_output, force):
    """Issue a certificate for a CSR under a profile; print its serial (on stderr)."""
    _check_outputs(force, output, chain_output)
    resp = _call(ctx, "SignCsr", pb.SignCsrRequest(csr_pem=_read(csr).decode(errors="replace"), profile=profile,
                                                   validity_days=days))
    _write_cert(resp, output, chain_output)


@ca.command("issue")
@click.argument("key_name")
@click.option("--profile", required=True)
@click.option("--algorithm", type=ALGORITHMS, default="EC_P256")
@click.option("--cn", "common_name", default="")
@click.option("--dns", multiple=True)
@click.option("--email", multiple=True)
@click.option("--days", type=UINT32, default=0)
@click.option("-o", "--output", default="-")
@force_option
@click.pass_context
def ca_issue(ctx, key_name, profile, algorithm, common_name, dns, email, days, output, force):
    """Generate KEY_NAME in the backend and issue a certificate for it."""
    _check_outputs(force, output)
    resp = _call(ctx, "IssueCertificate", pb.IssueRequest(
        key_name=key_name, algorithm=pb.KeyAlgorithm.Value(algorithm), profile=profile, common_name=common_name,
        dns_names=list(dns), emails=list(email), validity_days=days))
    _write_cert(resp.certificate, output, None, {"key_name": key_name})


def normalize_serial(text: str) -> str:
    """A certificate serial as the CA's hex: plain hex, openssl's colon form (4A:1B:...), "serial=4A1B..."
    (openssl x509 -serial) or 0x-prefixed; any case."""
    s = text.strip()
    if s.lower().startswith("serial="):
        s = s[len("serial="):]
    if s.lower().startswith("0x"):
        s = s[2:]
    if ":" in s:
        parts = s.split(":")
        if not all(1 <= len(p) <= 2 for p in parts):
            s = "?"
        else:
            s = "".join(p.zfill(2) for p in parts)
    if not s or len(s) > 40 or any(c not in "0123456789abcdefABCDEF" for c in s):
        raise CtlError(f"the serial '{clip(text, 64)}' is neither hexadecimal (4A1B...) nor openssl's colon form "
                       "(4A:1B:...)", code="INVALID_ARGUMENT", exit_code=2)
    return s.upper()


@ca.command("revoke")
@click.argument("serial")
@click.option("--reason", default="unspecified")
@click.pass_context
def ca_revoke(ctx, serial, reason):
    """Revoke the certificate with SERIAL: hex (4A1B...) or openssl's colon form (4A:1B:...)."""
    serial_hex = normalize_serial(serial)
    resp = _call(ctx, "Revoke", pb.RevokeRequest(serial_hex=serial_hex, reason=reason))
    _emit({"revoked": serial_hex, "reason": reason, "revoked_at": resp.revoked_at}, f"revoked {serial_hex}")


@ca.command("crl")
@click.option("-o", "--output", default="-")
@click.option("--der", is_flag=True)
@force_option
@click.pass_context
def ca_crl(ctx, output, der, force):
    """Write the current CRL."""
    _check_outputs(force, output)
    resp = _call(ctx, "GetCrl", pb.Empty())
    if der:
        _output(output, resp.crl_der, "crl_der", {"format": "der"}, binary=True)
    else:
        _output(output, resp.crl_pem.encode(), "crl_pem", {"format": "pem"})


# -- attestation --------------------------------------------------------------------------------------------
@main.group()
def attest():
    """TPM key attestation: fetch evidence from the daemon, verify it on a host."""


def _pcr_list(pcrs: str) -> list[int]:
    try:
        return [int(p) for p in pcrs.split(",") if p.strip()]
    except ValueError:
        raise CtlError(f"--pcrs: '{clip(pcrs, 64)}' is not a comma-separated list of PCR numbers", code="USAGE",
                       exit_code=2) from None


@attest.command("key")
@click.argument("name")
@click.option("--pcrs", default="0,1,2,3,4,5,6,7", help="Comma-separated SHA-256 PCR indices.")
@click.option("-o", "--output", default="-", help="Evidence file (JSON).")
@force_option
@click.pass_context
def attest_key(ctx, name, pcrs, output, force):
    """Certify key NAME with the AK and quote the PCRs, under a fresh nonce."""
    _check_outputs(force, output)
    nonce = os.urandom(16)
    pcr_list = _pcr_list(pcrs)
    if any(not 0 <= p < 24 for p in pcr_list):
        raise CtlError("--pcrs: PCR numbers are 0 to 23", code="USAGE", exit_code=2)
    stub = _stub(ctx)
    resp = stub.Attest(pb.AttestRequest(key=pb.KeyRef(name=name), nonce=nonce, pcrs=pcr_list), timeout=TIMEOUT)
    public = stub.GetPublicKey(pb.KeyRef(name=name), timeout=TIMEOUT)
    doc = {f.name: getattr(resp, f.name).hex() for f in pb.AttestResponse.DESCRIPTOR.fields if f.name != "pcr_values"}
    doc["pcr_values"] = {str(k): v.hex() for k, v in resp.pcr_values.items()}
    doc["pcrs"] = pcr_list
    doc["key_name"] = name
    doc["key_public_der"] = public.public_key_der.hex()
    if _json_mode() and output in (None, "-"):
        _emit(doc)
    else:
        _output(output, json.dumps(doc, indent=1).encode() + b"\n", "evidence", {"key_name": name})


def _fail_on(problems: list[str], code: str = "VERIFICATION_FAILED") -> None:
    """Print each problem a verifier found as a FAIL line and exit 1 if there was any (under --json, one
    error object that lists them)."""
    if not problems:
        return
    if _json_mode():
        click.echo(json.dumps({"error": problems[0], "code": code, "problems": problems}))
    else:
        for p in problems:
            click.echo(f"FAIL: {p}")
    sys.exit(1)


def load_evidence(path: str) -> tuple[dict, bytes, bytes, list[int]]:
    try:
        doc = json.loads(_read(path))
        evidence = {k: bytes.fromhex(v) for k, v in doc.items() if k not in ("pcr_values", "pcrs", "key_name")}
        evidence["pcr_values"] = {int(k): bytes.fromhex(v) for k, v in doc["pcr_values"].items()}
        return evidence, evidence["nonce"], evidence["key_public_der"], [int(p) for p in doc["pcrs"]]
    except (ValueError, KeyError, TypeError, AttributeError):
        raise CtlError(f"{path} is not an evidence file written by 'attest key'", code="INVALID_ARGUMENT") from None


@attest.command("verify")
@click.argument("evidence")
@click.option("--ek-ca", help="PEM bundle of the TPM vendor CA(s); requires and checks the EK certificate chain.")
@click.option("--ak", "ak_pem", help="PEM of the attestation key pinned at enrolment.")
def attest_verify(evidence, ek_ca, ak_pem):
    """Check attestation EVIDENCE offline: signatures, nonce, key name, PCR digest, EK chain.

    A trust anchor ties the evidence to a genuine TPM: --ek-ca (the EK certificate chain) or --ak (the AK
    pinned by 'attest enroll'). Without either, the signatures can only be checked against the AK the
    evidence itself carries: then it prints "OK (signature only: no trust anchor given)" and exits 3."""
    from segway_kms.attestation.verify import verify_evidence

    ev, nonce, key_der, pcrs = load_evidence(evidence)
    try:
        problems = verify_evidence(ev, nonce, key_der, pcrs, ek_ca_bundle=_read(ek_ca) if ek_ca else None,
                                   pinned_ak_pem=_read(ak_pem) if ak_pem else None)
    except (ValueError, TypeError) as exc:
        raise CtlError(f"{evidence}: malformed evidence ({clip(exc)})", code="INVALID_ARGUMENT") from None
    _fail_on(problems)
    anchors = [a for a, given in (("ek-ca", ek_ca), ("ak", ak_pem)) if given]
    if not anchors:
        _emit({"ok": True, "trust_anchor": None, "signature_only": True},
              "OK (signature only: no trust anchor given)")
        sys.exit(EXIT_NO_ANCHOR)
    _emit({"ok": True, "trust_anchor": anchors, "signature_only": False}, "attestation OK")


@attest.command("enroll")
@click.argument("evidence")
@click.option("--ek-ca", required=True, help="PEM bundle of the TPM vendor CA(s).")
@click.option("-o", "--output", required=True, help="Where to write the enrolled AK (PEM).")
@force_option
@click.pass_context
def attest_enroll(ctx, evidence, ek_ca, output, force):
    """Check EVIDENCE, then prove with MakeCredential/ActivateCredential that its AK shares a TPM with the
    certified EK; write the AK for `attest verify --ak`."""
    from segway_kms.attestation import enroll
    from segway_kms.attestation.verify import verify_evidence

    _check_outputs(force, output)
    ev, nonce, key_der, pcrs = load_evidence(evidence)
    if not ev.get("ek_public_area") or not ev.get("ek_certificate_der"):
        raise CtlError("the evidence carries no EK certificate: nothing to enrol against (was the TPM set up "
                       "with an EK certificate, e.g. swtpm_setup --create-ek-cert?)", code="FAILED_PRECONDITION")
    try:
        problems = verify_evidence(ev, nonce, key_der, pcrs, ek_ca_bundle=_read(ek_ca))
    except (ValueError, TypeError) as exc:
        raise CtlError(f"{evidence}: malformed evidence ({clip(exc)})", code="INVALID_ARGUMENT") from None
    _fail_on(problems)
    secret, blob, encrypted = enroll.challenge(ev)
    answer = _call(ctx, "ActivateCredential", pb.ActivateCredentialRequest(credential_blob=blob,
                                                                         encrypted_secret=encrypted)).secret
    if not enroll.answer_matches(secret, answer):
        _fail_on(["the TPM did not recover the credential: the AK is not bound to the EK"])
    _output(output, enroll.ak_pem(ev), "ak_pem", {"enrolled": True}, err_text="AK enrolled")


# -- audit, random, health ----------------------------------------------------------------------------------
@main.group()
def audit():
    """Export and verify the signed, hash-chained audit log."""


ANCHOR_FIELDS = ("nv_public_area", "certify_info", "certify_signature", "ak_public_area")


@audit.command("export")
@click.option("-o", "--output", required=True, help="JSON-lines file.")
@click.option("--public-key-output", help="Where to write the audit public key (PEM).")
@click.option("--anchor-output", help="Also fetch the TPM anchor, certified for a fresh nonce (JSON).")
@force_option
@click.pass_context
def audit_export(ctx, output, public_key_output, anchor_output, force):
    """Export the whole audit log."""
    _check_outputs(force, output, public_key_output, anchor_output)
    stub, entries, seq = _stub(ctx), [], 1
    nonce = os.urandom(16) if anchor_output else b""
    while True:
        resp = stub.ExportAudit(pb.AuditExportRequest(from_seq=seq, anchor_nonce=nonce), timeout=TIMEOUT)
        entries += resp.entries
        if not resp.next_seq:
            break
        seq = resp.next_seq
    summary = {"entries": len(entries)}
    if public_key_output:
        _write(public_key_output, resp.audit_public_key_pem.encode())
        summary["public_key_output"] = public_key_output
    if anchor_output:
        doc = {"nonce": nonce.hex(), "nv_index": resp.anchor.nv_index}
        doc.update({f: getattr(resp.anchor, f).hex() for f in ANCHOR_FIELDS})
        _write(anchor_output, json.dumps(doc, indent=1).encode() + b"\n")
        summary["anchor_output"] = anchor_output
    if entries:
        summary["head"] = json.loads(entries[-1]).get("hash")
    _output(output, "".join(e + "\n" for e in entries).encode(), "log", summary, err_text=f"{len(entries)} entries")


def load_anchor(path: str) -> tuple[dict, bytes]:
    try:
        doc = json.loads(_read(path))
        anchor = {f: bytes.fromhex(doc[f]) for f in ANCHOR_FIELDS}
        anchor["nv_index"] = int(doc["nv_index"])
        return anchor, bytes.fromhex(doc["nonce"])
    except (ValueError, KeyError, TypeError, AttributeError):
        raise CtlError(f"{path} is not an anchor file written by 'audit export --anchor-output'",
                       code="INVALID_ARGUMENT") from None


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
        raise CtlError(f"cannot use the public key: {clip(exc)}", code="INVALID_ARGUMENT") from None
    if anchor_file:
        anchor, nonce = load_anchor(anchor_file)
        try:
            problems += verify_anchor(lines, anchor, nonce, _read(ak_pem))
        except (ValueError, TypeError) as exc:
            raise CtlError(f"{anchor_file}: malformed anchor ({clip(exc)})", code="INVALID_ARGUMENT") from None
    _fail_on(problems)
    _emit({"ok": True, "entries": len([ln for ln in lines if ln.strip()]), "anchored": bool(anchor_file)},
          "audit log OK" + (" (anchored in the TPM)" if anchor_file else ""))


@main.command("random")
@click.argument("length", type=UINT32)
@click.pass_context
def random_cmd(ctx, length):
    """Print LENGTH random bytes from the backend (hex)."""
    data = _call(ctx, "GetRandom", pb.RandomRequest(length=length)).data.hex()
    _emit({"data": data}, data)


@main.command("health")
@click.option("--wait", "wait_seconds", type=click.FloatRange(0, 3600), default=0,
              help="Keep asking for up to this many seconds until the daemon is SERVING (e.g. right after start).")
@click.pass_context
def health_cmd(ctx, wait_seconds):
    """Query the standard gRPC health service; exit 1 unless SERVING."""
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    deadline = time.monotonic() + wait_seconds
    while True:
        try:
            resp = health_pb2_grpc.HealthStub(_channel(ctx)).Check(
                health_pb2.HealthCheckRequest(service="segway.kms.v1.Kms"), timeout=TIMEOUT)
            name = health_pb2.HealthCheckResponse.ServingStatus.Name(resp.status)
        except grpc.RpcError as exc:
            if time.monotonic() >= deadline:
                raise
            name = exc.code().name
        if name == "SERVING" or time.monotonic() >= deadline:
            break
        time.sleep(0.2)
    _emit({"status": name}, name)
    sys.exit(0 if name == "SERVING" else 1)


_KMS_CODES = {"InvalidArgument": "INVALID_ARGUMENT", "NotFound": "NOT_FOUND", "AlreadyExists": "ALREADY_EXISTS",
              "PermissionDenied": "PERMISSION_DENIED", "Unauthenticated": "UNAUTHENTICATED",
              "FailedPrecondition": "FAILED_PRECONDITION", "BackendError": "BACKEND_ERROR",
              "ConfigError": "CONFIG_ERROR"}


def _fail(message: str, code: str, exit_code: int) -> None:
    if _state["json"]:
        click.echo(json.dumps({"error": message, "code": code}))
    else:
        click.echo(f"segway-kmsctl: {message}", err=True)
    sys.exit(exit_code)


def run(argv: list[str] | None = None) -> None:
    args = sys.argv[1:] if argv is None else argv
    # --json is a global option; honour it for errors found before the group's callback ran (usage errors)
    _state["json"] = "--json" in args[:args.index("--")] if "--" in args else "--json" in args
    try:
        rc = main.main(args=args, prog_name="segway-kmsctl", standalone_mode=False)
        sys.exit(rc or 0)
    except grpc.RpcError as exc:
        _fail(f"{exc.code().name}: {exc.details()}", exc.code().name, 1)
    except CtlError as exc:
        _fail(exc.format_message(), exc.code, exc.exit_code)
    except click.UsageError as exc:
        if _state["json"]:
            _fail(exc.format_message(), "USAGE", exc.exit_code)
        exc.show()
        sys.exit(exc.exit_code)
    except click.ClickException as exc:
        _fail(exc.format_message(), "ERROR", exc.exit_code)
    except click.exceptions.Abort:
        _fail("aborted", "ABORTED", 1)
    except KmsError as exc:
        _fail(str(exc), _KMS_CODES.get(type(exc).__name__, "ERROR"), 2)
    except OSError as exc:
        _fail(f"{exc.filename or ''}: {exc.strerror}" if exc.filename else str(exc), "IO_ERROR", 1)

