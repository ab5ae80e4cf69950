"""Check a signed FIT against a U-Boot control DTB the way current U-Boot does.

- the signed node set is rebuilt from the configuration (``hashed-nodes`` is not trusted, as in
  U-Boot >= 2026.04 and Debian's patched 2023.01);
- ``hashed-strings`` is bounds-checked (U-Boot 2026.10);
- every key node with ``required = "conf"`` must verify one signature of the configuration
  (``required-mode = "any"`` relaxes that to one key); ``required = "image"`` keys must verify an
  image signature of every image the configuration loads;
- every image hash is recomputed; node names with '@' are refused.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa, utils

from ...crypto import HASHES, ecdsa_der
from ...errors import InputError, VerificationError
from . import tree as t
from .keys import SIG_NODE, key_nodes, public_key_from_node
from .regions import find_regions



@dataclass
class FitReport:
    config: str
    checks: list[str] = field(default_factory=list)

    def ok(self, text: str) -> None:
        self.checks.append(text)


def signed_nodes(fdt, conf: str) -> list[str]:
    """U-Boot's fit_config_get_signed_nodes: root, config, every referenced image and its hashes."""
    nodes = ["/", f"{t.CONFIGS}/{conf}"]
    for _, image in t.conf_image_refs(fdt, conf):
        hashes_ = t.hash_children(fdt, image)
        if not hashes_:
            raise VerificationError(f"no hash nodes in image '{image}': cannot build the signed node list")
        nodes.append(f"{t.IMAGES}/{image}")
        nodes.extend(f"{t.IMAGES}/{image}/{h}" for h in hashes_)
        if "cipher" in t.subnodes(fdt, f"{t.IMAGES}/{image}"):
            nodes.append(f"{t.IMAGES}/{image}/cipher")
    return nodes


def _verify_value(public, algo: str, pad: str, digest: bytes, value: bytes) -> None:
    hash_name, crypto = algo.split(",", 1)
    hash_algo = HASHES[hash_name]()
    if isinstance(public, rsa.RSAPublicKey):
        if crypto != f"rsa{public.key_size}" or len(value) != public.key_size // 8:
            raise InvalidSignature
        scheme = (padding.PSS(padding.MGF1(hash_algo), padding.PSS.AUTO) if pad == "pss" else padding.PKCS1v15())
        public.verify(value, digest, scheme, utils.Prehashed(hash_algo))
    else:
        size = (public.curve.key_size + 7) // 8
        if crypto != f"ecdsa{public.curve.key_size}" or len(value) != 2 * size:
            raise InvalidSignature
        public.verify(ecdsa_der(value), digest, ec.ECDSA(utils.Prehashed(hash_algo)))


def config_digest(fdt, blob: bytes, conf: str, sig_path: str, hash_name: str) -> bytes:
    hs = t.getprop(fdt, sig_path, "hashed-strings")
    if hs is None or len(hs) < 8:
        raise VerificationError(f"{sig_path}: invalid hashed-strings property")
    strings_size = int.from_bytes(hs[4:8], "big")
    if strings_size > fdt.size_dt_strings():
        raise VerificationError(f"{sig_path}: hashed-strings reaches beyond the strings block")
    regions = find_regions(blob, frozenset(signed_nodes(fdt, conf)), add_string_tab=False)
    regions.append((fdt.off_dt_strings(), strings_size))
    h = hashes.Hash(HASHES[hash_name]())
    for start, size in regions:
        h.update(bytes(blob[start:start + size]))
    return h.finalize()


def _check_signature(fdt, blob: bytes, sig_path: str, key_path: str, ctl, kind: str, conf: str | None) -> None:
    algo = t.getstr(fdt, sig_path, "algo")
    value = t.getprop(fdt, sig_path, "value")
    if not algo or value is None:
        raise VerificationError(f"{sig_path}: unsigned (no value)")
    hash_name = algo.split(",", 1)[0]
    if hash_name not in HASHES:
        raise VerificationError(f"{sig_path}: unsupported algo {algo!r}")
    if t.getstr(ctl, key_path, "algo") != algo:
        raise VerificationError(f"{sig_path}: algo {algo!r} differs from key {key_path}")
    pad = t.getstr(fdt, sig_path, "padding") or "pkcs-1.5"
    if kind == "config":
        digest = config_digest(fdt, blob, conf, sig_path, hash_name)
    else:
        image = sig_path.split("/")[2]
        digest = t.digest(hash_name, t.image_data(fdt, blob, image))
    try:
        _verify_value(public_key_from_node(ctl, key_path), algo, pad, digest, value)
    except InvalidSignature:
        raise VerificationError(f"{sig_path}: signature does not verify with {key_path}") from None


@t.fdt_errors("malformed device tree")
def verify_fit(blob: bytes, control_dtb: bytes, config: str | None = None) -> FitReport:
    """Raise VerificationError unless U-Boot would accept configuration ``config`` (default: default)."""
    t.check_fit_structure(blob)
    fdt = t.open_fdt(blob)
    ctl = t.open_fdt(control_dtb)
    conf = config or t.getstr(fdt, t.CONFIGS, "default")
    if not conf:
        raise VerificationError("no configuration given and the FIT has no default")
    if conf not in t.subnodes(fdt, t.CONFIGS):
        raise VerificationError(f"no configuration {conf} in the FIT")
    report = FitReport(conf)

    images = []
    for _, image in t.conf_image_refs(fdt, conf):
        if image in images:
            continue
        images.append(image)
        data = t.image_data(fdt, blob, image)
        hashes_ = t.hash_children(fdt, image)
        if not hashes_:
            raise VerificationError(f"image {image} has no hash node")
        for h in hashes_:
            path = f"{t.IMAGES}/{image}/{h}"
            algo, value = t.getstr(fdt, path, "algo"), t.getprop(fdt, path, "value")
            if not algo or value is None:
                raise VerificationError(f"{path}: no algo or value")
            if t.digest(algo, data) != value:
                raise VerificationError(f"{path}: bad data hash")
        report.ok(f"image {image}: {', '.join(hashes_)} match")

    keys = key_nodes(ctl)
    required = [(k, t.getstr(ctl, k, "required")) for k in keys]
    conf_keys = [k for k, r in required if r == "conf"]
    image_keys = [k for k, r in required if r == "image"]
    if not conf_keys and not image_keys:
        raise VerificationError(f"control DTB has no required key under {SIG_NODE}")
    mode = t.getstr(ctl, SIG_NODE, "required-mode") or "all"
    conf_sigs = [f"{t.CONFIGS}/{conf}/{n}" for n in t.subnodes(fdt, f"{t.CONFIGS}/{conf}") if n.startswith("signature")]
    verified, failures = [], []
    for key in conf_keys:
        errors = []
        for sig in conf_sigs:
            try:
                _check_signature(fdt, blob, sig, key, ctl, "config", conf)
            except (VerificationError, InputError) as err:
                errors.append(str(err))
                continue
            verified.append(key)
            report.ok(f"{sig}: {t.getstr(fdt, sig, 'algo')}:{t.getstr(ctl, key, 'key-name-hint')}+ verified")
            break
        else:
            failures.append(f"required key {key} verifies no signature of {conf}"
                            + (f" ({errors[-1]})" if errors else " (unsigned)"))
    if conf_keys and (failures if mode == "all" else not verified):
        raise VerificationError("; ".join(failures))
    for key in image_keys:
        for image in images:
            sigs = [f"{t.IMAGES}/{image}/{n}" for n in t.subnodes(fdt, f"{t.IMAGES}/{image}") if n.startswith("signature")]
            for sig in sigs:
                try:
                    _check_signature(fdt, blob, sig, key, ctl, "image", None)
                    report.ok(f"{sig}: verified with {key}")
                    break
                except (VerificationError, InputError):
                    continue
            else:
                raise VerificationError(f"image {image}: no signature verifies with required key {key}")
    return report
