"""Key-ceremony plans: ``pki init`` on mutations of the development plan (conf/pki-dev.yaml, as the
ceremony tests use it), run against a token of its own."""

from __future__ import annotations

import secrets
from pathlib import Path

import yaml

from segway_sign.hsm import devhsm

from .base import Input, Shop, Target

REPO = Path(__file__).resolve().parents[4]
TOKEN = "fuzz-pki"


def _token(shop: Shop) -> str:
    """A second token in the shop's SoftHSM: every accepted ceremony creates keys, which must not
    crowd the token the other targets sign with."""
    def make(where: Path):
        devhsm.init_token(shop.token.conf, TOKEN, secrets.token_hex(6), shop.token.pin)
        return f"pkcs11:token={TOKEN}"
    return shop.once("pki-token", make)


def _build(shop: Shop, case: Path) -> None:
    plan = yaml.safe_load((REPO / "conf" / "pki-dev.yaml").read_text())
    plan["token"] = _token(shop)
    # Every accepted plan is a ceremony: keys are generated in the token. So P-256 keys (RSA ones
    # would take most of the run), and the root with two of the keys (one with each kind of field).
    plan["keys"] = [k for k in plan["keys"] if k["purpose"] in ("fit", "stm32")]
    for spec in [plan["root"], *plan["keys"]]:
        spec["key"] = "p256"
    (case / "plan.yaml").write_text(yaml.safe_dump(plan, sort_keys=False))


def _argv(shop: Shop, case: Path) -> list[str]:
    return ["pki", "init", str(case / "plan.yaml"), "--out", str(case / "pki"), "--replace-keys", "--yes", "--json",
            *shop.pin]


TARGETS = [
    # A plan is the operator's instruction, not a signed artifact: what it asks for is created.
    Target("pki init (plan)", (Input("plan.yaml", None, text="yaml"),), _build, _argv, token=True, share=0.4),
]
