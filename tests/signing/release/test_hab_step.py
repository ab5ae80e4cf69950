"""The hab step: an i.MX 8M flash.bin (made by U-Boot's mkimage) signed with CSF + IMG keys inside a
release; `release verify` re-checks both CSFs against the SRK table the release ships."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "formats"))
from test_hab import Pki, make_flash_bin  # noqa: E402

from release_fixtures import FileKeys, make_deploy, plan_doc, write_cert, write_plan  # noqa: E402
from segway_sign.errors import SegwayError  # noqa: E402
from segway_sign.formats import hab_srk  # noqa: E402
from segway_sign.release import steps  # noqa: E402
from segway_sign.release.plan import load_plan  # noqa: E402
from segway_sign.release.runner import run_release  # noqa: E402
from segway_sign.release.verify import load_certs_dir, verify_release  # noqa: E402


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    return Pki(tmp_path_factory.mktemp("hab-pki"), "rsa2048", srk_index=1)


def hab_release(tmp_path, pki, img_key: bool = True):
    deploy = make_deploy(tmp_path)
    work = tmp_path / "imx"
    work.mkdir()
    flash_bin, _ = make_flash_bin(work)
    (deploy / "imx-boot.bin").write_bytes(flash_bin.read_bytes())
    keys = FileKeys(tmp_path)
    uris = dict(keys.uris)
    for name, key, cert in (("hab-csf", pki.csf_key, pki.csf_cert), ("hab-img", pki.img_key, pki.img_cert)):
        uris[name] = f"pkcs11:token=files;object={name}"
        keys.keys[uris[name]] = key
        write_cert(keys.certs / f"{name}.pem", cert)
    (keys.certs / "hab-srk-table.bin").write_bytes(pki.table)
    options = {"soc": "imx8m", "srk_index": 1} | ({"img_key": "hab-img"} if img_key else {})
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
