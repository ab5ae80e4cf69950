"""pki init against real tokens; certificates checked with openssl."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import pytest
import yaml
from cryptography import x509

from tests.helpers import one_line_error, run_cli
from segway_sign.errors import InputError, TokenError
from segway_sign.formats.fit.keys import add_pubkey
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
    assert purposes == {"root-ca", "fit", "stm32", "fip", "fip-chain", "hab", "hab-csf", "hab-img", "verity",
                        "release", "optee-ta"}
    root = out / "certs" / "segway-dev-root-ca.pem"
    for entry in record["keys"]:
        assert entry["attributes"]["never_extractable"] and entry["attributes"]["always_sensitive"]
        cert_path = out / "certs" / f"{entry['label']}.pem"
        # openssl, not our code, checks the chain and the purpose.
        # (HAB CSF and IMG keys are issued by SRK 1, a CA below the root.)
        untrusted = ["-untrusted", str(out / "certs" / f"{entry['issuer']}.pem")] \
            if entry["purpose"] in ("hab-csf", "hab-img") else []
        verify = subprocess.run(["openssl", "verify", "-CAfile", str(root)] + untrusted +
                                ["-purpose", "any", str(cert_path)], capture_output=True, text=True)
        assert verify.returncode == 0, verify.stdout + verify.stderr
        cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
        ski = cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value.digest
        assert ski.hex() == entry["key_id"]  # CKA_ID is the subjectKeyIdentifier
        if entry["purpose"] not in ("root-ca", "hab", "ahab"):
            assert cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca is False
        if entry["purpose"] in ("hab-csf", "hab-img"):
            assert entry["issuer"] == "segway-dev-hab-srk1"
    # U-Boot key node for the fit key: exactly what add-pubkey writes for the same key.
    fit = next(k for k in record["keys"] if k["purpose"] == "fit")
    dtb = (out / "u-boot" / "segway-dev-fit.dtb").read_bytes()
    pub = x509.load_pem_x509_certificate((out / "certs" / "segway-dev-fit.pem").read_bytes()).public_key()
    assert dtb == add_pubkey(_empty_dtb(), pub, "segway-dev-fit", required="conf")
    assert "key-segway-dev-fit" in (out / "u-boot" / "segway-dev-fit.dtsi").read_text()
    # dtc (not us) accepts the exported tree and finds the key node.
    dts = subprocess.run(["dtc", "-I", "dtb", "-O", "dts", str(out / "u-boot" / "segway-dev-fit.dtb")],
                         capture_output=True, text=True, check=True).stdout
    assert 'required = "conf"' in dts and fit["uri"].startswith(token.token_uri)
    # STM32 PKH: the SHA-256 of the 64-byte public point, as the ROM checks it.
    stm32_pub = x509.load_pem_x509_certificate((out / "certs" / "segway-dev-stm32.pem").read_bytes()).public_key()
    nums = stm32_pub.public_numbers()
    import hashlib
    pkh = hashlib.sha256(nums.x.to_bytes(32, "big") + nums.y.to_bytes(32, "big")).digest()
    assert (out / "fuses" / "segway-dev-stm32.pkh.bin").read_bytes() == pkh
    # TF-A's ROTPK_HASH for the generic chain: SHA-256 of the fip key's DER SubjectPublicKeyInfo.
    from cryptography.hazmat.primitives import serialization
    fip_pub = serialization.load_pem_public_key((out / "keys" / "segway-dev-fip.pub.pem").read_bytes())
    assert (out / "fuses" / "segway-dev-fip.rotpk_hash.bin").read_bytes() == hashlib.sha256(
        fip_pub.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)).digest()
    # OP-TEE's TA key: OP-TEE's own pem_to_pub_c.py (what its build runs on TA_PUBLIC_KEY) reads the
    # exported PEM and embeds the certificate's modulus.
    ta_entry = next(k for k in record["keys"] if k["purpose"] == "optee-ta")
    assert ta_entry["exports"] == ["keys/segway-dev-optee-ta.pub.pem"] and ta_entry["type"].startswith("rsa")
    from segway_dev import debsrc
    subprocess.run(["/usr/bin/python3", str(debsrc.source_tree("optee-os") / "scripts" / "pem_to_pub_c.py"),
                    "--prefix", "ta_pub_key", "--key", str(out / ta_entry["exports"][0]),
                    "--out", str(tmp_path / "ta_pub_key.c")], check=True, capture_output=True)
    ta_pub = x509.load_pem_x509_certificate((out / "certs" / "segway-dev-optee-ta.pem").read_bytes()).public_key()
    modulus = ta_pub.public_numbers().n.to_bytes(ta_pub.key_size // 8, "big")
    c_text = (tmp_path / "ta_pub_key.c").read_text()
    embedded = bytes(int(x, 16) for x in re.findall(r"0x([0-9a-f]{2})", c_text.split("_modulus[]", 1)[1]))
    assert embedded == modulus and "ta_pub_key_exponent = 65537;" in c_text
    # HAB: Debian's srktool (not us) builds the same SRK table and fuse file from the four certificates.
    der = __import__("cryptography.hazmat.primitives.serialization", fromlist=["x"]).Encoding.DER
    srk_crts = []
    for i in range(1, 5):
        hab_crt = tmp_path / f"srk{i}.crt"
        hab_crt.write_bytes(x509.load_pem_x509_certificate(
            (out / "certs" / f"segway-dev-hab-srk{i}.pem").read_bytes()).public_bytes(der))
        srk_crts.append(str(hab_crt))
    subprocess.run(["srktool", "-h", "4", "-t", str(tmp_path / "t.bin"), "-e", str(tmp_path / "f.bin"),
                    "-d", "sha256", "-c", ",".join(srk_crts), "-f", "1"], check=True, capture_output=True)
    assert (out / "fuses" / "hab-SRK_table.bin").read_bytes() == (tmp_path / "t.bin").read_bytes()
    assert (out / "fuses" / "hab-SRK_fuse.bin").read_bytes() == (tmp_path / "f.bin").read_bytes()
    assert record["hab_srk"]["complete"] is True
    prog = (out / "fuses" / "hab-fuse-prog-imx8m.txt").read_text().splitlines()
    assert prog[0].startswith("# IRREVERSIBLE") and len(prog) == 9
    # Nothing secret in the output.
    for f in out.rglob("*"):
        if f.is_file():
            assert b"PRIVATE KEY" not in f.read_bytes()
            assert token.pin.encode() not in f.read_bytes()


def test_stm32_key_table_for_header_v2(softhsm, tmp_path):
    """Several stm32 keys: the PKHTH of their table, as STM32MP13/MP2 fuse it."""
    from cryptography.hazmat.primitives.serialization import load_pem_public_key
    from segway_sign.formats.stm32.fuses import pkh_fuse_words
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
    assert b"pki export" in again.stderr  # every key exists: the public material can be written from them
    assert not (tmp_path / "b").exists()
    exists = run_cli(args + ["--out", str(tmp_path / "a"), "--replace-keys"], softhsm)
    assert exists.returncode == 1 and b"exists" in exists.stderr
    # Destroying keys needs a confirmation: without a terminal, --yes.
    unconfirmed = run_cli(args + ["--out", str(tmp_path / "a"), "--replace-keys", "--force"], softhsm)
    count = 1 + len(yaml.safe_load(DEV_PLAN.read_text())["keys"])  # the root and the keys
    one_line_error(unconfirmed, code=2, match=f"--replace-keys destroys {count} key")
    before = json.loads((tmp_path / "a" / "ceremony.json").read_text())
    replaced = run_cli(args + ["--out", str(tmp_path / "a"), "--replace-keys", "--force", "--yes"], softhsm)
    assert replaced.returncode == 0, replaced.stderr.decode()
    after = json.loads((tmp_path / "a" / "ceremony.json").read_text())
    assert {k["label"]: k["key_id"] for k in before["keys"]} != {k["label"]: k["key_id"] for k in after["keys"]}


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


def test_a_plan_that_cannot_finish_creates_nothing(softhsm, tmp_path):
    """Five HAB SRKs (a table holds four): refused before any key exists, in one line."""
    raw = yaml.safe_load(DEV_PLAN.read_text())
    raw["token"] = softhsm.token_uri
    srk = next(k for k in raw["keys"] if k["purpose"] == "hab")
    raw["keys"].append(dict(srk, label="segway-dev-hab-srk5"))
    (tmp_path / "p.yaml").write_text(yaml.safe_dump(raw))
    res = run_cli(["pki", "init", str(tmp_path / "p.yaml"), "--out", str(tmp_path / "o"), "--pin-file",
                   str(softhsm.pin_file)], softhsm)
    one_line_error(res, match="a hab key table holds 1 to 4 keys, the plan has 5")
    show = run_cli(["pki", "show", str(plan_for(softhsm, tmp_path)), "--pin-file", str(softhsm.pin_file),
                    "--json"], softhsm)
    assert show.returncode == 0, show.stderr.decode()
    assert json.loads(show.stdout)["existing"] == 0 and not (tmp_path / "o").exists()


@pytest.mark.parametrize("edit, message", [
    (lambda r: r["keys"].append({"label": "csf", "purpose": "hab-csf", "key": "rsa2048", "subject": {"CN": "c"}}),
     "needs issuer"),
    (lambda r: r["keys"].append({"label": "csf", "purpose": "hab-csf", "key": "rsa2048", "issuer": "segway-dev-fit",
                                 "subject": {"CN": "c"}}), "is not a hab key"),
    (lambda r: r["keys"].append({"label": "csf", "purpose": "hab-csf", "key": "p256",
                                 "issuer": "segway-dev-hab-srk1", "subject": {"CN": "c"}}), "SRK's type"),
    (lambda r: r["keys"][0].update(issuer="segway-dev-hab-srk1"), "only hab-csf"),
    (lambda r: r["keys"].append({"label": "a1", "purpose": "ahab", "key": "p256", "subject": {"CN": "a"}})
     or r["keys"].append({"label": "a2", "purpose": "ahab", "key": "p384", "subject": {"CN": "a"}}), "one key type"),
    (lambda r: next(k for k in r["keys"] if k["purpose"] == "fip").update(key="rsa2048"), "a fip key must be"),
    (lambda r: r["keys"].remove(next(k for k in r["keys"] if k["purpose"] == "fip")), "need the fip key"),
    (lambda r: next(k for k in r["keys"] if k["purpose"] == "fip-chain").update(key="rsa2048"),
     "a fip-chain key must be"),
])
def test_whole_plan_checks(tmp_path, edit, message):
    raw = yaml.safe_load(DEV_PLAN.read_text())
    edit(raw)
    path = tmp_path / "p.yaml"
    path.write_text(yaml.safe_dump(raw))
    with pytest.raises(InputError, match=message):
        load_plan(path)


def test_failure_after_creation_names_the_keys_and_export_finishes(softhsm, tmp_path):
    """A key the token cannot create, after others were: the error names what now exists and how to
    finish; --resume creates the rest, and export writes the public material from the keys."""
    path = plan_for(softhsm, tmp_path)
    plan = load_plan(path)
    from segway_sign.hsm import PinSource, open_session
    import dataclasses

    def opener(uri):
        return open_session(str(uri), module_path=softhsm.module, pin=PinSource(file=softhsm.pin_file))
    good = plan.keys[3]
    plan.keys[3] = dataclasses.replace(good, kind="rsa1024")  # refused by key generation
    with pytest.raises(TokenError) as err:
        run_ceremony(plan, tmp_path / "out", opener, log=lambda m: None, plan_path=str(path))
    message = str(err.value)
    assert "the token now holds segway-dev-root-ca, segway-dev-fit, segway-dev-verity, segway-dev-release of " \
        "this plan" in message
    assert "pki init --resume" in message and "pki export" in message and "\n" not in message
    assert not (tmp_path / "out").exists()
    args = ["--pin-file", str(softhsm.pin_file)]
    export = run_cli(["pki", "export", str(path), "--out", str(tmp_path / "e")] + args, softhsm)
    one_line_error(export, match="lacks key(s) of this plan: segway-dev-stm32")
    resume = run_cli(["pki", "init", str(path), "--resume", "--out", str(tmp_path / "r"), "--certs-dir",
                      str(tmp_path / "certs"), "--json"] + args, softhsm)
    assert resume.returncode == 0, resume.stderr.decode()
    record = json.loads(resume.stdout)
    assert [k["label"] for k in record["keys"] if not k["created"]] == \
        ["segway-dev-root-ca", "segway-dev-fit", "segway-dev-verity", "segway-dev-release"]
    export = run_cli(["pki", "export", str(path), "--out", str(tmp_path / "e"), "--certs-dir",
                      str(tmp_path / "certs2"), "--json"] + args, softhsm)
    assert export.returncode == 0, export.stderr.decode()
    exported = json.loads(export.stdout)
    assert [k["certificate_sha256"] for k in exported["keys"]] == [k["certificate_sha256"] for k in record["keys"]]
    assert sorted(p.name for p in (tmp_path / "certs").iterdir()) == \
        sorted(p.name for p in (tmp_path / "certs2").iterdir())
    for f in (tmp_path / "certs").iterdir():
        assert f.read_bytes() == (tmp_path / "certs2" / f.name).read_bytes()


def test_incomplete_srk_table_gets_no_fuse_values(softhsm, tmp_path):
    raw = yaml.safe_load(DEV_PLAN.read_text())
    raw["token"] = softhsm.token_uri
    raw["keys"] = [k for k in raw["keys"] if k["purpose"] not in ("hab", "hab-csf", "hab-img")]
    raw["keys"].append({"label": "srk1", "purpose": "hab", "key": "rsa2048", "subject": {"CN": "srk1"}})
    (tmp_path / "p.yaml").write_text(yaml.safe_dump(raw))
    res = run_cli(["pki", "init", str(tmp_path / "p.yaml"), "--out", str(tmp_path / "o"), "--pin-file",
                   str(softhsm.pin_file), "--json"], softhsm)
    assert res.returncode == 0, res.stderr.decode()
    record = json.loads(res.stdout)
    assert record["hab_srk"]["complete"] is False and "not final" in record["hab_srk"]["note"]
    assert sorted(p.name for p in (tmp_path / "o" / "fuses").glob("hab-*")) == ["hab-SRK_table.bin"]


def test_ahab_srks_and_sgk(softhsm, tmp_path):
    """Four AHAB SRKs and an SGK issued by the first: the table (parsed back), fuse lines per SoC."""
    from segway_sign.formats import ahab
    raw = yaml.safe_load(DEV_PLAN.read_text())
    raw["token"] = softhsm.token_uri
    raw["keys"] = [{"label": f"ahab-srk{i}", "purpose": "ahab", "key": "p256", "subject": {"CN": f"srk{i}"}}
                   for i in range(1, 5)]
    raw["keys"].append({"label": "ahab-sgk", "purpose": "ahab-sgk", "key": "p256", "issuer": "ahab-srk1",
                        "subject": {"CN": "sgk"}})
    (tmp_path / "p.yaml").write_text(yaml.safe_dump(raw))
    out = tmp_path / "o"
    res = run_cli(["pki", "init", str(tmp_path / "p.yaml"), "--out", str(out), "--certs-dir", str(tmp_path / "c"),
                   "--pin-file", str(softhsm.pin_file), "--json"], softhsm)
    assert res.returncode == 0, res.stderr.decode()
    record = json.loads(res.stdout)
    assert record["ahab_srk"]["complete"] is True
    table = (out / "fuses" / "ahab-SRK_table.bin").read_bytes()
    assert len(ahab.parse_srk_table(table)) == 4
    assert (tmp_path / "c" / "segway-dev-ahab-srk-table.bin").read_bytes() == table
    for soc in ahab.FUSE_LAYOUTS:
        lines = (out / "fuses" / f"ahab-fuse-prog-{soc}.txt").read_text().splitlines()
        assert lines[0].startswith("# IRREVERSIBLE") and all(x.startswith("fuse prog") for x in lines[1:])
    sgk = subprocess.run(["openssl", "verify", "-CAfile", str(out / "certs" / f"{raw['root']['label']}.pem"),
                          "-untrusted", str(out / "certs" / "ahab-srk1.pem"), "-purpose", "any",
                          str(out / "certs" / "ahab-sgk.pem")], capture_output=True, text=True)
    assert sgk.returncode == 0, sgk.stdout + sgk.stderr


def test_production_example_plan_loads():
    plan = load_plan(REPO / "conf" / "pki-prod-example.yaml")
    assert plan.root.token is not None and plan.root.token != plan.token  # the root is offline
    assert len(plan.of("hab")) == 4 and plan.of("hab-csf") and plan.of("hab-img")
