"""pki init against real tokens; certificates checked with openssl."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
import yaml
from cryptography import x509

from helpers import one_line_error, run_cli
from segway_sign.errors import InputError, TokenError
from segway_sign.formats.fit_keys import add_pubkey
from segway_sign.formats.fit_tree import open_fdt
from segway_sign.pki.ceremony import _empty_dtb, run_ceremony
from segway_sign.pki.plan import load_plan

REPO = Path(__file__).resolve().parents[3]
DEV_PLAN = REPO / "conf" / "pki-dev.yaml"


def plan_for(tok, tmp_path: Path) -> Path:
    """The development plan pointed at the test's token."""
    raw = yaml.safe_load(DEV_PLAN.read_text())
    raw["token"] = tok.token_uri
    path = tmp_path / "plan.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def test_dev_plan_ceremony(token, tmp_path):
    plan = plan_for(token, tmp_path)
    out = tmp_path / "pki"
    res = run_cli(["pki", "init", str(plan), "--out", str(out), "--pin-file", str(token.pin_file), "--json"], token)
    assert res.returncode == 0, res.stderr.decode()
    record = json.loads(res.stdout)
    assert record == json.loads((out / "ceremony.json").read_text())
    purposes = {k["purpose"] for k in record["keys"]}
    assert purposes == {"root-ca", "fit", "stm32", "hab", "verity", "release"}
    root = out / "certs" / "segway-dev-root-ca.pem"
    for entry in record["keys"]:
        assert entry["attributes"]["never_extractable"] and entry["attributes"]["always_sensitive"]
        cert_path = out / "certs" / f"{entry['label']}.pem"
        # openssl, not our code, checks the chain and the purpose.
        verify = subprocess.run(["openssl", "verify", "-CAfile", str(root), "-purpose", "any", str(cert_path)],
                                capture_output=True, text=True)
        assert verify.returncode == 0, verify.stdout + verify.stderr
        cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
        ski = cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value.digest
        assert ski.hex() == entry["key_id"]  # CKA_ID is the subjectKeyIdentifier
        if entry["purpose"] not in ("root-ca", "hab"):
            assert cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca is False
    # U-Boot key node for the fit key: exactly what add-pubkey writes for the same key.
    fit = next(k for k in record["keys"] if k["purpose"] == "fit")
    dtb = (out / "u-boot" / "dev.dtb").read_bytes()
    pub = x509.load_pem_x509_certificate((out / "certs" / "segway-dev-fit.pem").read_bytes()).public_key()
    assert dtb == add_pubkey(_empty_dtb(), pub, "dev", required="conf")
    assert "key-dev" in (out / "u-boot" / "dev.dtsi").read_text()
    # dtc (not us) accepts the exported tree and finds the key node.
    dts = subprocess.run(["dtc", "-I", "dtb", "-O", "dts", str(out / "u-boot" / "dev.dtb")],
                         capture_output=True, text=True, check=True).stdout
    assert 'required = "conf"' in dts and fit["uri"].startswith(token.token_uri)
    # STM32 PKH: the SHA-256 of the 64-byte public point, as the ROM checks it.
    stm32_pub = x509.load_pem_x509_certificate((out / "certs" / "segway-dev-stm32.pem").read_bytes()).public_key()
    nums = stm32_pub.public_numbers()
    import hashlib
    pkh = hashlib.sha256(nums.x.to_bytes(32, "big") + nums.y.to_bytes(32, "big")).digest()
    assert (out / "fuses" / "segway-dev-stm32.pkh.bin").read_bytes() == pkh
    # HAB: Debian's srktool (not us) builds the same SRK table and fuse file from the certificate.
    hab_crt = tmp_path / "srk1.crt"
    hab_crt.write_bytes(x509.load_pem_x509_certificate((out / "certs" / "segway-dev-hab-srk1.pem").read_bytes())
                        .public_bytes(__import__("cryptography.hazmat.primitives.serialization",
                                                 fromlist=["x"]).Encoding.DER))
    subprocess.run(["srktool", "-h", "4", "-t", str(tmp_path / "t.bin"), "-e", str(tmp_path / "f.bin"),
                    "-d", "sha256", "-c", str(hab_crt), "-f", "1"], check=True, capture_output=True)
    assert (out / "fuses" / "hab-SRK_table.bin").read_bytes() == (tmp_path / "t.bin").read_bytes()
    assert (out / "fuses" / "hab-SRK_fuse.bin").read_bytes() == (tmp_path / "f.bin").read_bytes()
    # Nothing secret in the output.
    for f in out.rglob("*"):
        if f.is_file():
            assert b"PRIVATE KEY" not in f.read_bytes()
            assert token.pin.encode() not in f.read_bytes()


def test_stm32_key_table_for_header_v2(softhsm, tmp_path):
    """Several stm32 keys: the PKHTH of their table, as STM32MP13/MP2 fuse it."""
    from cryptography.hazmat.primitives.serialization import load_pem_public_key
    from segway_sign.pki.stm32_fuses import pkh_fuse_words
    raw = yaml.safe_load(DEV_PLAN.read_text())
    raw["token"] = softhsm.token_uri
    stm32 = next(k for k in raw["keys"] if k["purpose"] == "stm32")
    raw["keys"] = [dict(stm32, label=f"stm32-k{i}") for i in range(4)]
    (tmp_path / "p.yaml").write_text(yaml.safe_dump(raw))
    res = run_cli(["pki", "init", str(tmp_path / "p.yaml"), "--out", str(tmp_path / "o"), "--pin-file",
                   str(softhsm.pin_file)], softhsm)
    assert res.returncode == 0, res.stderr.decode()
    pubs = [load_pem_public_key((tmp_path / "o" / "keys" / f"stm32-k{i}.pub.pem").read_bytes()) for i in range(4)]
    assert (tmp_path / "o" / "fuses" / "stm32-pkhth.bin").read_bytes().hex() == pkh_fuse_words(pubs, 2)["hash"]


@pytest.mark.parametrize("root_kind", ["p384", "rsa2048"])
def test_brainpool_stm32_key_in_a_ceremony(token, tmp_path, root_kind):
    """key: bp256t1 for stm32: created in the token, certified by the root (checked by openssl)."""
    import hashlib
    raw = yaml.safe_load(DEV_PLAN.read_text())
    raw["token"] = token.token_uri
    raw["root"]["key"] = root_kind
    stm32 = next(k for k in raw["keys"] if k["purpose"] == "stm32")
    raw["keys"] = [dict(stm32, label="stm32-bp", key="bp256t1"), dict(stm32, label="stm32-p256", key="p256")]
    (tmp_path / "p.yaml").write_text(yaml.safe_dump(raw))
    out = tmp_path / "o"
    res = run_cli(["pki", "init", str(tmp_path / "p.yaml"), "--out", str(out), "--pin-file", str(token.pin_file),
                   "--json"], token)
    assert res.returncode == 0, res.stderr.decode()
    record = json.loads(res.stdout)
    entry = next(k for k in record["keys"] if k["label"] == "stm32-bp")
    assert entry["type"] == "bp256t1" and entry["attributes"]["never_extractable"]
    root = out / "certs" / f"{raw['root']['label']}.pem"
    cert_path = out / "certs" / "stm32-bp.pem"
    verify = subprocess.run(["openssl", "verify", "-CAfile", str(root), "-purpose", "any", str(cert_path)],
                            capture_output=True, text=True)
    assert verify.returncode == 0, verify.stdout + verify.stderr
    text = subprocess.run(["openssl", "x509", "-in", str(cert_path), "-noout", "-text"],
                          capture_output=True, text=True, check=True).stdout
    assert "brainpoolP256t1" in text and "Code Signing" in text and "CA:FALSE" in text
    # The certified key is the token key: same point in keys/, the certificate and the PKH file.
    pub_der = subprocess.run(["openssl", "x509", "-in", str(cert_path), "-noout", "-pubkey"],
                             capture_output=True, check=True).stdout
    assert pub_der == (out / "keys" / "stm32-bp.pub.pem").read_bytes()
    point = subprocess.run(["openssl", "pkey", "-pubin", "-outform", "DER"], input=pub_der,
                           capture_output=True, check=True).stdout[-65:]
    cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
    ski = cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value.digest
    assert ski == hashlib.sha1(point).digest() and ski.hex() == entry["key_id"]
    assert (out / "fuses" / "stm32-bp.pkh.bin").read_bytes() == hashlib.sha256(point[1:]).digest()
    table = json.loads((out / "fuses" / "stm32-pkhth.otp.json").read_text())
    assert table["pk_hashes"][0] == hashlib.sha256(b"\x02\x00\x00\x00" + point[1:]).hexdigest()


def test_refuses_existing_keys_and_output(softhsm, tmp_path):
    plan = plan_for(softhsm, tmp_path)
    args = ["pki", "init", str(plan), "--pin-file", str(softhsm.pin_file)]
    assert run_cli(args + ["--out", str(tmp_path / "a")], softhsm).returncode == 0
    again = run_cli(args + ["--out", str(tmp_path / "b")], softhsm)
    assert again.returncode == 1 and b"refusing to overwrite" in again.stderr
    assert not (tmp_path / "b").exists()
    exists = run_cli(args + ["--out", str(tmp_path / "a"), "--replace-keys"], softhsm)
    assert exists.returncode == 1 and b"exists" in exists.stderr
    replaced = run_cli(args + ["--out", str(tmp_path / "a"), "--replace-keys", "--force"], softhsm)
    assert replaced.returncode == 0, replaced.stderr.decode()


def test_failure_leaves_no_output(softhsm, tmp_path, monkeypatch):
    plan = load_plan(plan_for(softhsm, tmp_path))
    from segway_sign.hsm import PinSource, open_session

    def opener(uri):
        if "other" in str(uri):
            raise TokenError("token 'other' is not available")
        return open_session(str(uri), module_path=softhsm.module, pin=PinSource(file=softhsm.pin_file))
    from segway_sign.hsm.uri import Pkcs11Uri
    plan.keys[-1] = plan.keys[-1].__class__(**{**plan.keys[-1].__dict__, "token": Pkcs11Uri(token="other")})
    with pytest.raises(TokenError):
        run_ceremony(plan, tmp_path / "out", opener, log=lambda m: None)
    assert not (tmp_path / "out").exists()
    assert not list(tmp_path.glob(".out.*"))


@pytest.mark.parametrize("edit, message", [
    (lambda r: r.pop("root"), "missing 'root'"),
    (lambda r: r["keys"][0].update(key="rsa1024"), "key type"),
    (lambda r: r["keys"][0].update(purpose="firmware"), "purpose"),
    (lambda r: r["keys"][0].pop("key_name_hint"), "key_name_hint"),
    (lambda r: r["keys"].append(dict(r["keys"][1])), "duplicate"),
    (lambda r: r.update(token="pkcs11:token=x?pin-value=1"), "pin-value"),
    (lambda r: r["root"].update(subject={"O": "no cn"}), "CN"),
    (lambda r: r["root"].update(key="bp256t1"), "only for purpose stm32"),
    (lambda r: r["keys"][0].update(key="bp256t1"), "only for purpose stm32"),
])
def test_plan_errors(tmp_path, edit, message):
    raw = yaml.safe_load(DEV_PLAN.read_text())
    edit(raw)
    path = tmp_path / "p.yaml"
    path.write_text(yaml.safe_dump(raw))
    with pytest.raises(Exception, match=message):
        load_plan(path)


def test_plan_not_yaml(tmp_path):
    path = tmp_path / "p.yaml"
    path.write_text("token: [unclosed")
    with pytest.raises(InputError, match="not valid YAML"):
        load_plan(path)


@pytest.mark.parametrize("text, message", [
    ("token: " + "[" * 100000, "nested too deeply"),
    ("keys: " + "{a: " * 30000, "nested too deeply"),
    ("token: pkcs11:token=x\nroot: 1\nkeys: [1]\n7: 8\n", "unknown field(s) 7"),
    ("token: [1]\nroot: {}\nkeys: [1]\n", "token must be a pkcs11: URI"),
    ("token: pkcs11:token=%ff\nroot: {}\nkeys: [1]\n", "UTF-8"),
    ("token: pkcs11:token=x\nroot: {label: r, key: [p256], subject: {CN: r}}\nkeys: [1]\n", "key type"),
    ("token: pkcs11:token=x\nroot: {label: r, key: p256, subject: {CN: r, C: Germany}}\nkeys: [1]\n", "subject field C"),
    ("token: pkcs11:token=x\nroot: {label: r, key: p256, subject: {CN: r}, validity_days: 99999999}\nkeys: [1]\n",
     "validity_days"),
    ("name: \x80\n", "not valid YAML"),
])
def test_malformed_plans_are_one_line_errors(tmp_path, text, message):
    """Through the CLI, before any token is opened: no RecursionError, TypeError or ValueError."""
    path = tmp_path / "p.yaml"
    path.write_bytes(text.encode("latin-1"))
    res = run_cli(["pki", "init", str(path), "--out", str(tmp_path / "out")])
    one_line_error(res, match=message)
    assert not (tmp_path / "out").exists()
