"""The fit commands as CI scripts use them: PIN sources, errors, atomic outputs, --json."""

from __future__ import annotations

import json
import os
import stat

import pytest

from tests.fit_fixtures import EPOCH, empty_dtb, make_unsigned_fit
from tests.helpers import P11KIT_CLIENT, one_line_error, run_cli


@pytest.fixture
def signing(softhsm, tmp_path):
    uri = softhsm.generate("rsa2048", "segway-fit")
    unsigned = make_unsigned_fit(tmp_path / "fit")
    return softhsm, uri, unsigned


def _sign(tok, uri, src, out, *extra, env=None):
    return run_cli(["fit", "sign", "--key", uri, "--in", str(src), "--out", str(out), *extra], tok,
                   env={"SOURCE_DATE_EPOCH": EPOCH, **(env or {})})



def failed(res, *words, code=1):
    err = one_line_error(res, code)
    for w in words:
        assert w in err, err
    return err


def test_sign_with_pin_file_then_verify(signing, tmp_path):
    tok, uri, unsigned = signing
    out = tmp_path / "signed.itb"
    res = _sign(tok, uri, unsigned, out, "--pin-file", str(tok.pin_file), "--json")
    assert res.returncode == 0, res.stderr.decode()
    result = json.loads(res.stdout)
    assert result["signatures"][0]["node"] == "/configurations/conf-1/signature-1"
    assert result["bytes_sent_to_token"] == 51
    assert stat.S_IMODE(out.stat().st_mode) == 0o644
    ctl = tmp_path / "ctl.dtb"
    res = run_cli(["fit", "add-pubkey", "--key", uri, "--dtb", str(empty_dtb(tmp_path / "e.dtb")), "--out", str(ctl),
                   "--key-name-hint", "dev", "--pin-file", str(tok.pin_file)], tok)
    assert res.returncode == 0, res.stderr.decode()
    ok = run_cli(["fit", "verify", "--dtb", str(ctl), "--in", str(out)])
    assert ok.returncode == 0 and b"sha256,rsa2048:dev+ verified" in ok.stdout
    bad = run_cli(["fit", "verify", "--dtb", str(ctl), "--in", str(unsigned)])
    failed(bad, "unsigned")


def test_pin_from_env_var_and_from_segway_pin_file(signing, tmp_path):
    tok, uri, unsigned = signing
    res = _sign(tok, uri, unsigned, tmp_path / "a.itb", "--pin-env", "CI_TOKEN_PIN", env={"CI_TOKEN_PIN": tok.pin})
    assert res.returncode == 0, res.stderr.decode()
    res = _sign(tok, uri, unsigned, tmp_path / "b.itb", env={"SEGWAY_PIN_FILE": str(tok.pin_file)})
    assert res.returncode == 0, res.stderr.decode()


def test_wrong_pin(signing, tmp_path):
    tok, uri, unsigned = signing
    bad = tmp_path / "bad.pin"
    bad.write_text("99999999\n")
    bad.chmod(0o600)
    out = tmp_path / "x.itb"
    res = _sign(tok, uri, unsigned, out, "--pin-file", str(bad))
    err = failed(res, "refused the PIN")
    assert "99999999" not in err and not out.exists()
    # The right PIN still works: one wrong attempt did not lock the token.
    assert _sign(tok, uri, unsigned, out, "--pin-file", str(tok.pin_file)).returncode == 0


def test_no_pin_source_without_terminal(signing, tmp_path):
    tok, uri, unsigned = signing
    failed(_sign(tok, uri, unsigned, tmp_path / "x.itb"), "needs a PIN")


def test_existing_output_needs_force(signing, tmp_path):
    tok, uri, unsigned = signing
    out = tmp_path / "o.itb"
    out.write_bytes(b"keep")
    failed(_sign(tok, uri, unsigned, out, "--pin-file", str(tok.pin_file)), "exists", "--force")
    assert out.read_bytes() == b"keep"
    assert _sign(tok, uri, unsigned, out, "--pin-file", str(tok.pin_file), "--force").returncode == 0
    assert out.read_bytes() != b"keep"


@pytest.mark.parametrize("case", ["module", "token", "key", "pin-file", "input", "malformed", "truncated",
                                  "pin-in-uri", "slot", "p11kit-down"])
def test_errors_are_one_line(signing, tmp_path, case):
    tok, uri, unsigned = signing
    out = tmp_path / "out.itb"
    args, env = ["--pin-file", str(tok.pin_file)], {}
    src, key = unsigned, uri
    if case == "module":
        args += ["--module", "/nonexistent/libpkcs11.so"]
        words = ["does not exist"]
    elif case == "token":
        key, words = "pkcs11:token=absent;object=segway-fit", ["no token matching token=absent"]
    elif case == "key":
        key, words = f"{tok.token_uri};object=absent", ["no private key"]
    elif case == "pin-file":
        args, words = ["--pin-file", str(tmp_path / "none")], ["PIN file", "does not exist"]
    elif case == "input":
        src, words = tmp_path / "missing.itb", ["does not exist"]
    elif case == "malformed":
        src = tmp_path / "junk.itb"
        src.write_bytes(os.urandom(4096))
        words = ["magic"]
    elif case == "truncated":
        src = tmp_path / "short.itb"
        src.write_bytes(unsigned.read_bytes()[:5000])
        words = ["truncated"]
    elif case == "pin-in-uri":
        key, words = uri + "?pin-value=1234", ["pin-value"]
    elif case == "slot":
        key, words = "pkcs11:slot-id=0;object=segway-fit", ["slot"]
    else:
        args += ["--module", P11KIT_CLIENT]
        env = {"P11_KIT_SERVER_ADDRESS": f"unix:path={tmp_path}/nothing.sock"}
        words = [f"p11-kit server at P11_KIT_SERVER_ADDRESS=unix:path={tmp_path}/nothing.sock did not answer"]
    res = _sign(tok, key, src, out, *args, env=env)
    failed(res, *words, code=2 if case in ("pin-in-uri", "slot") else 1)
    assert not out.exists() and not list(tmp_path.glob(".out.itb.*"))


def test_module_from_environment(signing, tmp_path):
    tok, uri, unsigned = signing
    res = _sign(tok, uri, unsigned, tmp_path / "x.itb", "--pin-file", str(tok.pin_file),
                env={"SEGWAY_PKCS11_MODULE": "/nonexistent/from-env.so"})
    failed(res, "/nonexistent/from-env.so")


def test_through_p11kit(p11kit, tmp_path):
    uri = p11kit.generate("rsa2048", "segway-fit")
    res = _sign(p11kit, uri, make_unsigned_fit(tmp_path / "fit"), tmp_path / "s.itb", "--pin-file",
                str(p11kit.pin_file))
    assert res.returncode == 0, res.stderr.decode()


def test_token_info_lists_keys(signing):
    tok, uri, _ = signing
    res = run_cli(["token", "info", "--json", "--pin-file", str(tok.pin_file)], tok)
    assert res.returncode == 0, res.stderr.decode()
    info = json.loads(res.stdout)
    token = next(t for t in info["tokens"] if t["label"] == tok.token_label)
    assert "RSA_PKCS" in token["mechanisms"] and "ECDSA" in token["mechanisms"]
    assert {o["class"] for o in token["objects"] if o["label"] == "segway-fit"} == {"private", "public"}
    no_pin = json.loads(run_cli(["token", "info", "--json"], tok).stdout)
    assert all(o["class"] != "private" for t in no_pin["tokens"] for o in t["objects"])


def test_init_dev_is_idempotent(tmp_path):
    d = tmp_path / "hsm"
    first = run_cli(["token", "init-dev", "--dir", str(d), "--json"])
    assert first.returncode == 0, first.stderr.decode()
    pin = (d / "user.pin").read_text()
    assert stat.S_IMODE((d / "user.pin").stat().st_mode) == 0o600
    assert run_cli(["token", "init-dev", "--dir", str(d)]).returncode == 0
    assert (d / "user.pin").read_text() == pin


def test_add_pubkey_from_certificate_needs_no_token(signing, tmp_path):
    """A build that defers signing keys U-Boot from the public certificate alone: the node is the
    one the token's key gives, and it verifies what the token signed."""
    import datetime

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    tok, uri, unsigned = signing
    public = tok.open_key(uri).public_key()
    issuer = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "fit")]))
            .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "ca")])).public_key(public)
            .serial_number(7).not_valid_before(now).not_valid_after(now + datetime.timedelta(days=1))
            .sign(issuer, hashes.SHA256()))
    cert_path = tmp_path / "fit.crt"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    dtb = empty_dtb(tmp_path / "e.dtb")
    from_token, from_cert = tmp_path / "token.dtb", tmp_path / "cert.dtb"
    res = run_cli(["fit", "add-pubkey", "--key", uri, "--dtb", str(dtb), "--out", str(from_token),
                   "--key-name-hint", "dev", "--pin-file", str(tok.pin_file)], tok)
    assert res.returncode == 0, res.stderr.decode()
    # No token module and no PIN in this environment.
    res = run_cli(["fit", "add-pubkey", "--key", str(cert_path), "--dtb", str(dtb), "--out", str(from_cert),
                   "--key-name-hint", "dev"], env={"SEGWAY_PKCS11_MODULE": str(tmp_path / "no-such-module.so")})
    assert res.returncode == 0, res.stderr.decode()
    assert from_cert.read_bytes() == from_token.read_bytes()
    signed = tmp_path / "signed.itb"
    assert _sign(tok, uri, unsigned, signed, "--pin-file", str(tok.pin_file)).returncode == 0
    ok = run_cli(["fit", "verify", "--dtb", str(from_cert), "--in", str(signed)])
    assert ok.returncode == 0, ok.stderr.decode()
    failed(run_cli(["fit", "add-pubkey", "--key", str(tmp_path / "missing.crt"), "--dtb", str(dtb),
                    "--out", str(tmp_path / "x.dtb"), "--key-name-hint", "dev"]), "missing.crt", code=2)
    assert not (tmp_path / "x.dtb").exists()


def _struct_tokens(blob: bytes):
    """(absolute offset, token) of each token in an FDT struct block."""
    import struct
    off_struct, off_strings, size_struct = (struct.unpack_from(">I", blob, o)[0] for o in (8, 12, 36))
    pos, end = off_struct, off_struct + size_struct
    while pos < end:
        tag = struct.unpack_from(">I", blob, pos)[0]
        yield pos, tag
        if tag == 1:
            pos = (blob.index(b"\0", pos + 4) + 4) & ~3
        elif tag == 3:
            pos += 12 + ((struct.unpack_from(">I", blob, pos + 4)[0] + 3) & ~3)
        else:
            pos += 4


@pytest.mark.parametrize("damage, words", [
    ("unknown-token", ["malformed device tree", "unknown token"]),
    ("reserve-map", ["reservation map"]),
    ("node-name", ["not printable"]),
])
def test_malformed_control_dtb(signing, tmp_path, damage, words):
    """A control DTB whose header is fine but whose structure is not: libfdt's BADSTRUCTURE in
    the middle of a check, or, for an unterminated reservation map, memory corruption when libfdt
    moves the tree; both commands that read a control DTB refuse it in one line."""
    tok, uri, unsigned = signing
    signed, ctl = tmp_path / "s.itb", tmp_path / "ctl.dtb"
    assert _sign(tok, uri, unsigned, signed, "--pin-file", str(tok.pin_file)).returncode == 0
    res = run_cli(["fit", "add-pubkey", "--key", uri, "--dtb", str(empty_dtb(tmp_path / "e.dtb")),
                   "--out", str(ctl), "--key-name-hint", "dev", "--pin-file", str(tok.pin_file)], tok)
    assert res.returncode == 0, res.stderr.decode()
    dtb = bytearray(ctl.read_bytes())
    if damage == "unknown-token":
        last_prop = [pos for pos, tag in _struct_tokens(bytes(dtb)) if tag == 3][-1]
        dtb[last_prop:last_prop + 4] = (10).to_bytes(4, "big")
    elif damage == "reserve-map":
        rsvmap = int.from_bytes(dtb[16:20], "big")
        dtb[rsvmap + 8:rsvmap + 16] = (0x2000).to_bytes(8, "big")  # the terminating entry is gone
    else:
        node = [pos for pos, tag in _struct_tokens(bytes(dtb)) if tag == 1][-1]
        dtb[node + 4] = 0x0A  # a line break in the key node's name
    bad = tmp_path / "bad.dtb"
    bad.write_bytes(dtb)
    failed(run_cli(["fit", "verify", "--dtb", str(bad), "--in", str(signed)]), *words)
    res = run_cli(["fit", "add-pubkey", "--key", uri, "--dtb", str(bad), "--out", str(tmp_path / "x.dtb"),
                   "--key-name-hint", "two", "--pin-file", str(tok.pin_file)], tok)
    failed(res, *words)
    assert not (tmp_path / "x.dtb").exists()


def test_unbalanced_unsigned_fit_is_one_line(signing, tmp_path):
    """The long fuzz run's unsigned.itb bit-flip (0x1bd37.4): a property length 16 bytes longer
    makes the struct walk meet one end of node too many (an IndexError in the copy-ahead walk)."""
    from segway_sign.formats.fit.regions import value_spans
    tok, uri, unsigned = signing
    blob = bytearray(unsigned.read_bytes())
    [(_, start, length)] = value_spans(blob, "ramdisk")  # /configurations/conf-1's, 10 bytes
    blob[start - 5] ^= 1 << 4  # the low byte of its length: 26
    bad, out = tmp_path / "bad.itb", tmp_path / "out.itb"
    bad.write_bytes(blob)
    failed(_sign(tok, uri, bad, out, "--pin-file", str(tok.pin_file)), "malformed")
    assert not out.exists() and not list(tmp_path.glob(".out.itb.*"))


def test_tree_without_room_grows(signing, tmp_path):
    """New signature nodes larger than the room first made for them (here a long key name): the
    tree grows until they fit, and the result verifies."""
    tok, uri, _ = signing
    unsigned = make_unsigned_fit(tmp_path / "bare", signature=False)
    hint = "k" * 30000
    out = tmp_path / "s.itb"
    res = _sign(tok, uri, unsigned, out, "--pin-file", str(tok.pin_file), "--key-name-hint", hint)
    assert res.returncode == 0, res.stderr.decode()
    ctl = tmp_path / "ctl.dtb"
    res = run_cli(["fit", "add-pubkey", "--key", uri, "--dtb", str(empty_dtb(tmp_path / "e.dtb")), "--out", str(ctl),
                   "--key-name-hint", hint, "--pin-file", str(tok.pin_file)], tok)
    assert res.returncode == 0, res.stderr.decode()
    res = run_cli(["fit", "verify", "--dtb", str(ctl), "--in", str(out)])
    assert res.returncode == 0, res.stderr.decode()
