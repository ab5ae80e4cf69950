"""The ahab step: an i.MX 93 image made by NXP's SPSDK, its containers signed inside a release (SRK in a
SoftHSM token, or an SGK the SRK certifies); SPSDK accepts the signed image, `release verify` checks
every container again against the SRK table the release ships, and refuses a tampered one."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from tests.helpers import ok, one_line_error, run_cli
from tests.signing.formats.test_ahab import (FAMILY, assert_sgk_accepted, export_image, nxpimage,  # noqa: F401
                                             nxpimage_v1cert, run_nxpimage, spsdk_verify, spsdk_verify_sgk)
from tests.signing.release.release_fixtures import (FileKeys, make_deploy, plan_doc, self_signed, token_certs,
                                                    write_cert, write_plan)
from segway_sign.errors import SegwayError, VerificationError
from segway_sign.formats import ahab
from segway_sign.release import steps
from segway_sign.release.certs import load_certs_dir
from segway_sign.release.plan import load_plan
from segway_sign.release.runner import run_release
from segway_sign.release.verify import verify_release

IMAGE = "flash.bin"


@pytest.fixture(scope="module")
def unsigned(tmp_path_factory, nxpimage) -> bytes:
    """An i.MX 93 image with two unsigned containers' worth of images, as SPSDK exports it."""
    return export_image(nxpimage, tmp_path_factory.mktemp("ahab-image"), "unsigned").read_bytes()


def record(rel: Path, step_id: str = "boot") -> dict:
    return next(s for s in json.loads((rel / "manifest.json").read_text())["steps"] if s["id"] == step_id)


def file_release(tmp_path: Path, unsigned: bytes, srk_index: int = 2, sgk: bool = False, options=None,
                 sign_with: int | None = None) -> tuple[Path, FileKeys, list]:
    """A release of the test deploy dir plus the AHAB image, with software keys behind pkcs11: URIs."""
    deploy = make_deploy(tmp_path)
    (deploy / IMAGE).write_bytes(unsigned)
    keys = FileKeys(tmp_path)
    srks = [ec.generate_private_key(ec.SECP256R1()) for _ in range(4)]
    (keys.certs / "ahab-srk-table.bin").write_bytes(ahab.srk_table([k.public_key() for k in srks], ca=sgk))
    uris = dict(keys.uris)
    named = {"ahab-srk": srks[srk_index - 1 if sign_with is None else sign_with]}  # srk_index counts from 1
    if sgk:
        named["ahab-sgk"] = ec.generate_private_key(ec.SECP256R1())
    for name, key in named.items():
        uris[name] = f"pkcs11:token=files;object={name}"
        keys.keys[uris[name]] = key
        write_cert(keys.certs / f"{name}.pem", self_signed(key, f"{name} test"))
    opts = {"srk_index": srk_index} | ({"sgk_key": "ahab-sgk"} if sgk else {}) | (options or {})
    doc = plan_doc(uris, [{"id": "boot", "type": "ahab", "key": "ahab-srk", "inputs": {"image": IMAGE},
                           "options": opts}])
    plan = load_plan(write_plan(tmp_path / "plan.yaml", doc), set(steps.REGISTRY))
    run_release(plan, deploy, tmp_path / "rel", keys.open_key, keys.certs)
    return tmp_path / "rel", keys, srks


@pytest.mark.slow
def test_ahab_step_with_token_keys_through_the_cli(softhsm, tmp_path, unsigned, nxpimage):
    """`segway-sign release` with the SRK in a SoftHSM token; SPSDK verifies and parses the container;
    `release verify` accepts the release and refuses it once a container byte changes."""
    tok = softhsm
    deploy = make_deploy(tmp_path)
    (deploy / IMAGE).write_bytes(unsigned)
    certs = tmp_path / "certs"
    uris = token_certs(tok, certs, names=("verity", "release", "ahab-srk"))
    others = [tok.open_key(tok.generate("p256", f"srk{i}")).public_key() for i in (1, 2, 4)]
    srk = tok.open_key(uris["ahab-srk"]).public_key()
    table = ahab.srk_table([others[0], others[1], srk, others[2]])  # the token key is SRK 3
    (certs / "ahab-srk-table.bin").write_bytes(table)
    doc = plan_doc(uris, [{"id": "boot", "type": "ahab", "key": "ahab-srk", "after": ["rootfs-verity"],
                           "inputs": {"image": IMAGE}, "options": {"srk_index": 3, "soc": "imx93"}}])
    plan = write_plan(tmp_path / "plan.yaml", doc)
    rel = tmp_path / "rel"
    pin = ["--pin-file", str(tok.pin_file)]
    ok(run_cli(["release", "--plan", str(plan), "--deploy-dir", str(deploy), "--out", str(rel), "--certs",
                str(certs), *pin], tok))
    assert (deploy / IMAGE).read_bytes() == unsigned  # the deploy dir is only read

    step = record(rel)
    assert step["details"]["containers"] == [0] and step["details"]["sgk"] is False
    assert step["details"]["srk_hash"] == ahab.srk_hash(table, "sha256").hex()
    assert (rel / "boot" / "ahab-srk-table.bin").read_bytes() == table
    text = ok(run_cli(["release", "verify", "--certs", str(certs), str(rel)]))
    assert text.startswith(f"{rel}: OK")

    # SPSDK: the container verifies with the SRK table it carries, and its parser reads SRK 3 back.
    signed = rel / "boot" / IMAGE
    res = spsdk_verify(nxpimage, tmp_path, signed)
    assert res.returncode == 0 and "Overall  result: Succeeded" in res.stdout, res.stdout[-3000:]
    res = run_nxpimage(nxpimage, "ahab", "parse", "-f", FAMILY, "-b", str(signed), "-o", "parsed", cwd=tmp_path)
    assert res.returncode == 0, res.stdout + res.stderr
    parsed = next((tmp_path / "parsed").rglob("*.yaml")).read_text()
    assert "srk_set: oem" in parsed and "used_srk_id: 2" in parsed, parsed

    # The same check `ahab verify` makes, from the CLI, on the released image.
    assert ok(run_cli(["ahab", "verify", "--in", str(signed), "--srk-table", str(certs / "ahab-srk-table.bin")])) \
        .startswith("OK")

    # One byte of the container's signature changed: the manifest hash refuses it ...
    data = bytearray(signed.read_bytes())
    c = ahab.parse_container(bytes(data), 0)
    data[c.sig_blk_offset + 0x40] ^= 1
    signed.write_bytes(bytes(data))
    one_line_error(run_cli(["release", "verify", "--certs", str(certs), str(rel)]), 1,
                   f"boot/{IMAGE}: sha256 differs from the manifest")
    # ... and so does the step's own check, which SPSDK agrees with.
    ctx = steps.VerifyContext("boot", rel / "boot", step, load_certs_dir(certs))
    with pytest.raises(SegwayError):
        steps.get("ahab").verify(ctx)
    res = spsdk_verify(nxpimage, tmp_path, signed)
    assert "Overall  result: Succeeded" not in res.stdout


@pytest.mark.slow
def test_ahab_step_with_an_sgk(tmp_path, unsigned, nxpimage_v1cert):
    """The SRK certifies an SGK (another plan key), which signs the container; spsdk 2.2 reads it."""
    rel, keys, _ = file_release(tmp_path, unsigned, srk_index=1, sgk=True,
                                options={"sgk_uuid": "00112233445566778899aabbccddeeff"})
    step = record(rel)
    assert step["details"]["sgk"] is True
    verify_release(rel, load_certs_dir(keys.certs))
    assert_sgk_accepted(spsdk_verify_sgk(nxpimage_v1cert, tmp_path, rel / "boot" / IMAGE))
    report = ahab.verify_container((rel / "boot" / IMAGE).read_bytes(), 0)
    assert report["sgk_uuid"] == "00112233445566778899aabbccddeeff" and report["srk_index"] == 0


def test_ahab_step_verify_checks_the_plan(tmp_path, unsigned):
    """What the step's check compares with the signed manifest: signer, containers, trusted SRK."""
    rel, keys, srks = file_release(tmp_path, unsigned, srk_index=2)
    certs = load_certs_dir(keys.certs)
    verify_release(rel, certs)
    step = record(rel)

    def refused(rec: dict, match: str, trusted=certs) -> None:
        with pytest.raises(VerificationError, match=match):
            steps.get("ahab").verify(steps.VerifyContext("boot", rel / "boot", rec, trusted))

    refused(step | {"options": step["options"] | {"srk_index": 1}}, "signed under SRK 2, not SRK 1")
    refused(step | {"details": step["details"] | {"containers": []}}, "lists the signed containers none")
    refused(step | {"options": step["options"] | {"container_offsets": [0x400]}}, "the plan asks for 0x400")
    refused(step | {"details": step["details"] | {"sgk": True}}, "signed by an SGK, the plan by the SRK")
    refused(step | {"options": step["options"] | {"revoke_mask": 3}}, "revocation mask 0, not 3")
    refused(step | {"details": step["details"] | {"soc": "imx8qxp", "hash_algorithm": "sha512"}},
            "does not hash to the SRK fuse value")
    refused(step, "SRK 2 of ahab-srk-table.bin is the key of none of the trusted certificates",
            trusted=[c for c in certs if "ahab-srk" not in c.subject.rfc4514_string()])
    # The image of an SPSDK-signed container under another SRK table is refused by the table check.
    other = ahab.srk_table([ec.generate_private_key(ec.SECP256R1()).public_key() for _ in range(4)])
    (rel / "boot" / "ahab-srk-table.bin").write_bytes(other)
    refused(step, "does not hash to the SRK fuse value")


@pytest.mark.parametrize("options,sign_with,message", [
    ({}, 0, "step 'boot': the signing key is not SRK 2 of the table"),
    ({"srk_index": 7}, None, "step 'boot': option srk_index must be an SRK number from 1 to 4, not 7"),
    ({"srk_index": 0}, None, "step 'boot': option srk_index counts SRKs from 1 (1-4, the first SRK is 1), not 0"),
    ({"soc": "imx8mm"}, None, "step 'boot': option soc must be one of imx8qm, imx8qxp, imx8ulp, imx93"),
    ({"sgk_uuid": "00"}, None, "step 'boot': options sgk_permissions and sgk_uuid need sgk_key"),
    ({"sgk_permissions": ["fuse"]}, None, "step 'boot': options sgk_permissions and sgk_uuid need sgk_key"),
    ({"srk_table": "absent.bin"}, None, "step 'boot': cannot read SRK table absent.bin"),
    ({"container_offsets": [0x400]}, None, "no AHAB container at 0x400"),
    ({"colour": "red"}, None, "step 'boot': unknown option(s) colour for type ahab"),
])
def test_ahab_step_refusals_leave_no_output(tmp_path, unsigned, options, sign_with, message):
    with pytest.raises(SegwayError) as err:
        file_release(tmp_path, unsigned, srk_index=2, options=options, sign_with=sign_with)
    assert message in str(err.value)
    assert not (tmp_path / "rel").exists()


def test_ahab_step_documents_its_options():
    doc = type(steps.get("ahab")).__doc__
    assert steps.get("ahab").options == {"srk_index", "srk_table", "soc", "sgk_key", "sgk_permissions", "sgk_uuid",
                                         "container_offsets", "revoke_mask"}
    assert all(f"        {name}: " in doc for name in steps.get("ahab").options)
