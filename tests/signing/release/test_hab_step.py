"""The hab step: an i.MX 8M flash.bin (made by U-Boot's mkimage) signed with CSF + IMG keys inside a
release; `release verify` re-checks both CSFs against the SRK table the release ships."""

from __future__ import annotations

import json

import pytest

from tests.signing.formats.hab.test_hab import Pki, make_flash_bin
from tests.signing.release.release_fixtures import FileKeys, make_deploy, plan_doc, write_cert, write_plan
from segway_sign.errors import SegwayError
from segway_sign.formats.hab import image as hab
from segway_sign.formats.hab import srk as hab_srk
from segway_sign.release import steps
from segway_sign.release.plan import load_plan
from segway_sign.release.runner import run_release
from segway_sign.release.certs import load_certs_dir
from segway_sign.release.verify import verify_release


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    return Pki(tmp_path_factory.mktemp("hab-pki"), "rsa2048", srk_index=1)


def hab_release(tmp_path, pki, img_key: bool = True, parts=None, spl_only: bool = False):
    deploy = make_deploy(tmp_path)
    work = tmp_path / "imx"
    work.mkdir()
    flash_bin, _ = make_flash_bin(work)
    data = flash_bin.read_bytes()
    if spl_only:  # a flash.bin without its FIT part
        data = data[: hab.fit_blocks(data, dict(hab.locate_parts(data, "imx8m"))["fit"])[0].offset]
    (deploy / "imx-boot.bin").write_bytes(data)
    keys = FileKeys(tmp_path)
    uris = dict(keys.uris)
    for name, key, cert in (("hab-csf", pki.csf_key, pki.csf_cert), ("hab-img", pki.img_key, pki.img_cert)):
        uris[name] = f"pkcs11:token=files;object={name}"
        keys.keys[uris[name]] = key
        write_cert(keys.certs / f"{name}.pem", cert)
    (keys.certs / "hab-srk-table.bin").write_bytes(pki.table)
    options = {"soc": "imx8m", "srk_index": 2} | ({"img_key": "hab-img"} if img_key else {}) | \
        ({"parts": parts} if parts is not None else {})
    doc = plan_doc(uris, [{"id": "imx-boot", "type": "hab", "key": "hab-csf", "inputs": {"image": "imx-boot.bin"},
                           "options": options}])
    plan = load_plan(write_plan(tmp_path / "plan.yaml", doc), set(steps.REGISTRY))
    run_release(plan, deploy, tmp_path / "rel", keys.open_key, keys.certs)
    return tmp_path / "rel", keys


def test_hab_step_signs_both_parts(tmp_path, pki, monkeypatch):
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1704067200")
    rel, keys = hab_release(tmp_path, pki)
    step = next(s for s in json.loads((rel / "manifest.json").read_text())["steps"] if s["id"] == "imx-boot")
    assert step["details"]["parts"] == ["spl", "fit"]
    assert step["details"]["srk_hash"] == hab_srk.srk_hash(pki.table).hex()
    assert (rel / "imx-boot" / "hab-srk-table.bin").read_bytes() == pki.table
    verify_release(rel, load_certs_dir(keys.certs))


def test_hab_image_with_another_srk_table_fails_verify(tmp_path, pki):
    rel, keys = hab_release(tmp_path, pki)
    other = Pki(tmp_path / "other", "rsa2048")
    # A swapped table fails the manifest hash first; the step's own check (CSF against the table)
    # refuses it as well.
    (rel / "imx-boot" / "hab-srk-table.bin").write_bytes(other.table)
    with pytest.raises(SegwayError, match="hab-srk-table.bin: sha256 differs"):
        verify_release(rel, load_certs_dir(keys.certs))
    record = next(s for s in json.loads((rel / "manifest.json").read_text())["steps"] if s["id"] == "imx-boot")
    ctx = steps.VerifyContext("imx-boot", rel / "imx-boot", record, load_certs_dir(keys.certs))
    with pytest.raises(SegwayError):
        steps.get("hab").verify(ctx)


def test_missing_srk_table_is_a_one_line_error(tmp_path, pki):
    deploy = make_deploy(tmp_path)
    (deploy / "imx-boot.bin").write_bytes(b"\0" * 4096)
    keys = FileKeys(tmp_path)
    uris = dict(keys.uris, **{"hab-csf": keys.uris["verity"]})
    write_cert(keys.certs / "hab-csf.pem", pki.csf_cert)
    doc = plan_doc(uris, [{"id": "imx-boot", "type": "hab", "key": "hab-csf", "inputs": {"image": "imx-boot.bin"}}])
    (keys.certs / "hab-csf.pem").write_bytes((keys.certs / "verity.pem").read_bytes())
    plan = load_plan(write_plan(tmp_path / "plan.yaml", doc), set(steps.REGISTRY))
    with pytest.raises(SegwayError, match="step 'imx-boot': cannot read SRK table hab-srk-table.bin"):
        run_release(plan, deploy, tmp_path / "rel", keys.open_key, keys.certs)
    assert not (tmp_path / "rel").exists()


def _step_context(rel, keys):
    record = next(s for s in json.loads((rel / "manifest.json").read_text())["steps"] if s["id"] == "imx-boot")
    return steps.VerifyContext("imx-boot", rel / "imx-boot", record, load_certs_dir(keys.certs))


def test_hab_step_verify_checks_the_fit_part(tmp_path, pki):
    rel, keys = hab_release(tmp_path, pki)
    ctx = _step_context(rel, keys)
    steps.get("hab").verify(ctx)
    image = rel / "imx-boot" / "imx-boot.bin"
    data = image.read_bytes()
    fit = dict(hab.locate_parts(data, "imx8m"))["fit"]
    fit_off = hab.fit_blocks(data, fit)[0].offset
    for tampered, message in ((data[: fit.offset] + bytes(32) + data[fit.offset + 32 :], "fit part: no IVT"),
                              (data[:fit_off], "fit part missing"),
                              (data[:fit_off] + b"\0" + data[fit_off:], "fit part missing")):
        image.write_bytes(tampered)
        with pytest.raises(SegwayError, match=message):
            steps.get("hab").verify(ctx)
    # A manifest that lists the SPL part alone, while the plan did not ask for that, is refused.
    image.write_bytes(data)
    ctx.record["details"]["parts"] = ["spl"]
    with pytest.raises(SegwayError, match="the manifest lists the signed parts spl, but the imx8m layout has spl, fit"):
        steps.get("hab").verify(ctx)


def test_hab_step_parts_option(tmp_path, pki, monkeypatch):
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1704067200")
    for name in ("all", "spl", "bad"):
        (tmp_path / name).mkdir()
    # Without the option, a flash.bin without its FIT part is refused when signing.
    with pytest.raises(SegwayError, match="fit part missing"):
        hab_release(tmp_path / "all", pki, spl_only=True)
    assert not (tmp_path / "all" / "rel").exists()
    # With `parts: [spl]` the step signs the SPL part alone, says so, and release verify checks that.
    rel, keys = hab_release(tmp_path / "spl", pki, parts=["spl"], spl_only=True)
    ctx = _step_context(rel, keys)
    assert ctx.record["details"]["parts"] == ["spl"]
    verify_release(rel, load_certs_dir(keys.certs))
    with pytest.raises(SegwayError, match="no part 'uboot'"):
        hab_release(tmp_path / "bad", pki, parts="spl,uboot")
