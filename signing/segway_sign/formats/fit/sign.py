"""U-Boot FIT signing ("verified boot") with mkimage's exact bytes.

The sequence of libfdt operations is mkimage's (tools/fit_image.c, tools/image-host.c): external
data is imported and the tree packed; then, pass after pass with 1 KiB more room each time, every
image hash is set, image signatures written, and configuration signatures written, until nothing
runs out of space. The hashed bytes therefore match mkimage byte for byte (the strings table is
part of them). Unlike mkimage, the token is asked for each signature once: a first run with
placeholder values of the right size collects the digests, then the real values are written.
"""

from __future__ import annotations

import mmap
from struct import error as struct_error
from dataclasses import dataclass, field
from typing import Callable, Iterator, Sequence

import libfdt
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa, utils

from ... import __version__
from ...atomic import FileRange
from ...crypto import HASHES, ecdsa_raw
from ...errors import InputError, UsageError, VerificationError
from ...reproducible import source_date_epoch
from . import tree as t
from .keys import algo_for_key, check_algo_matches_key
from .regions import Header, find_regions

SIGNER_NAME = "segway-sign"


@dataclass
class SignatureNode:
    """One signature node to fill in."""
    path: str
    kind: str  # "config" or "image"
    algo: str
    padding: str
    key_name_hint: str
    hashed_nodes: list[str] = field(default_factory=list)  # config signatures only
    digest: bytes = b""

    @property
    def hash_name(self) -> str:
        return self.algo.split(",", 1)[0]


@dataclass
class SignedFit:
    """The signed FIT as a list of buffers: the image data among them are views of the input (an
    mmap of it when the caller mapped the file), never copied; ``chunks()`` streams them."""
    parts: list
    signatures: list[SignatureNode]
    passes: int
    source: object = None  # what the data views point into
    starts: list = field(default_factory=list)  # per part: where it starts in source, or None

    @property
    def size(self) -> int:
        return sum(memoryview(p).nbytes for p in self.parts)

    @property
    def blob(self) -> bytes:
        return b"".join(self.chunks())

    def chunks(self, source_fd: int | None = None) -> Iterator:
        """The FIT in pieces of at most 8 MiB; pages of a mapped input are released behind. With
        ``source_fd``, the open file ``source`` maps, the image data comes as FileRanges of it
        instead, for write_file to copy inside the kernel."""
        for i, part in enumerate(self.parts):
            start = self.starts[i] if i < len(self.starts) else None
            view = memoryview(part)
            if start is None or view.nbytes <= _CHUNK:
                yield part
            elif source_fd is not None:
                yield FileRange(source_fd, start, view.nbytes)
            else:
                yield from _chunks(self.source, start, view.nbytes)



# ---------------------------------------------------------------------------------------------
# Preparation: external data in, missing signature nodes added, tree packed.

@dataclass
class _External:
    mode: str  # "offset" or "position"
    base: int = 0  # mkimage -p value for "position"


@dataclass
class _Payloads:
    """Image data kept outside the tree while signing: data is never hashed as part of a
    configuration and does not change how much room signatures need, so the passes run on a tree
    whose ``data`` values are empty and the payloads go back in once at the end."""
    views: dict[str, memoryview]
    external: _External | None
    source: object = None  # the FIT the views point into
    offsets: dict[str, int] = field(default_factory=dict)  # where each view starts in source
    by_libfdt: bool = False  # taken out (and to be put back) through libfdt copies

    def total(self) -> int:
        return sum(len(v) for v in self.views.values())


_CHUNK = 8 << 20


def _chunks(source, start: int, length: int) -> Iterator[memoryview]:
    """``source[start:start + length]`` as views of at most 8 MiB. With an mmap, the pages of each
    piece are dropped from this process once the consumer is done with it (the page cache keeps
    them): memory stays flat however large the FIT."""
    whole = memoryview(source)
    mapped = isinstance(source, mmap.mmap)
    end = start + length
    for off in range(start, end, _CHUNK):
        stop = min(off + _CHUNK, end)
        yield whole[off:stop]
        if mapped:
            low = off - off % mmap.PAGESIZE
            source.madvise(mmap.MADV_DONTNEED, low, stop - low)


def payload_spans(blob, minimum: int = _CHUNK) -> list[tuple[int, int]]:
    """(offset, length) of the embedded image data of at least ``minimum`` bytes, in tree order; []
    for anything that does not parse (a guess for copying ahead: sign_fit reports the errors)."""
    from .regions import value_spans
    try:
        return [(start, length) for path, start, length in value_spans(blob, "data")
                if path.startswith(t.IMAGES + "/") and path.count("/") == 2 and length >= minimum]
    except (InputError, ValueError, struct_error):
        return []


def split_payloads(blob) -> tuple[bytes, _Payloads]:
    """mkimage's fit_import_data (external data becomes ``data``; the tree is packed), with every
    ``data`` value emptied and returned as zero-copy views of ``blob``.

    The embedded values are cut out of the tree before libfdt sees it (without_values), so neither
    the tree copies libfdt needs nor the edits copy the image data. A tree where that could differ
    from libfdt (two nodes with one path, a node with two ``data`` properties) goes through libfdt."""
    from .regions import node_names, value_spans, without_values
    hdr = Header.parse(blob)
    paths = node_names(blob)
    spans = value_spans(blob, "data")
    if len(set(paths)) != len(paths) or len({p for p, _, _ in spans}) != len(spans):
        return _split_payloads_libfdt(blob)
    source = memoryview(blob)
    by_path = {p: (start, length) for p, start, length in spans}
    images = [p.rsplit("/", 1)[1] for p in paths if p.startswith(t.IMAGES + "/") and p.count("/") == 2]
    small = without_values(blob, [by_path[f"{t.IMAGES}/{n}"] for n in images if f"{t.IMAGES}/{n}" in by_path])
    views, offsets, layout = _image_views(t.open_fdt(small), source, by_path, hdr.totalsize)
    return _without_data(small, views), _Payloads(views, layout, blob, offsets)


def _split_payloads_libfdt(blob) -> tuple[bytes, _Payloads]:
    """split_payloads through libfdt on the whole FIT (copies it)."""
    from .regions import property_spans
    blob = bytes(blob)
    fdt = t.open_fdt(blob)
    views, _, layout = _image_views(fdt, memoryview(blob), property_spans(blob, "data"))
    del fdt
    return _without_data(blob, views), _Payloads(views, layout, blob, {}, by_libfdt=True)


def _image_views(fdt: libfdt.Fdt, source: memoryview, spans: dict[str, tuple[int, int]],
                 totalsize: int | None = None) -> tuple[dict[str, memoryview], dict[str, int], _External | None]:
    """Each image's data in ``source`` (the FIT ``fdt`` was read from): its ``data`` value, at
    ``spans`` (absolute offset and length by node path), or its external data (``totalsize`` as for
    tree.external_span). Returns the views by image name, where each starts, and the external
    layout (None when every image's data is embedded)."""
    views: dict[str, memoryview] = {}
    offsets: dict[str, int] = {}
    layout = None
    for name in t.subnodes(fdt, t.IMAGES):
        path = f"{t.IMAGES}/{name}"
        if path in spans:
            start, length = spans[path]
        elif (span := t.external_span(fdt, len(source), name, totalsize)) is not None:
            start, length, mode = span
            # mkimage -p positions are the first image's position plus aligned sizes.
            layout = layout or _External(mode, start if mode == "position" else 0)
        else:
            continue
        views[name], offsets[name] = source[start:start + length], start
    return views, offsets, layout


def _without_data(tree, names) -> bytes:
    """``tree`` with the ``data`` property of each image in ``names`` set empty (through libfdt)."""
    def empty_data(work: libfdt.Fdt) -> None:
        for name in names:
            work.setprop(work.path_offset(f"{t.IMAGES}/{name}"), "data", b"")

    return t.edit_tree(tree, 16 * len(names) + 16, empty_data, "cannot take the image data out of the FIT")


def join_payloads(tree: bytes, payloads: _Payloads) -> list:
    """Put the data back: in place (same layout as if it had been there throughout), or after the
    tree as mkimage -E / -p writes it. Returns the FIT as a list of buffers (the data uncopied)."""
    fdt = libfdt.Fdt(bytearray(tree))
    if payloads.external is None:
        if payloads.by_libfdt:
            return [_join_in_place_libfdt(fdt, payloads)]
        from .regions import property_spans, with_values
        # Values libfdt would pad with bytes of the old tree (short, unaligned ones) are set
        # through libfdt, on a small tree; the others are spliced in as views.
        small = {n: v for n, v in payloads.views.items() if len(v) % 4 and len(v) < len(tree)}
        fdt.resize(fdt.totalsize() + sum((len(v) + 3) & ~3 for v in small.values()))
        for name, view in small.items():
            fdt.setprop(fdt.path_offset(f"{t.IMAGES}/{name}"), "data", bytes(view))
        grown = bytes(fdt.as_bytearray())
        spans = property_spans(grown, "data")
        return with_values(grown, [(spans[f"{t.IMAGES}/{name}"][0], view)
                                   for name, view in payloads.views.items() if name not in small])
    # mkimage's fit_extract_data: data-offset (or data-position) and data-size replace data.
    layout, buf_ptr, chunks = payloads.external, 0, []
    fdt.resize(fdt.totalsize() + 64 * len(payloads.views) + 64)  # data-offset/-position, data-size
    for name in t.subnodes(fdt, t.IMAGES):
        if name not in payloads.views:
            continue
        view = payloads.views[name]
        node = fdt.path_offset(f"{t.IMAGES}/{name}")
        fdt.delprop(node, "data")
        if layout.mode == "position":
            fdt.setprop_u32(node, "data-position", layout.base + buf_ptr)
        else:
            fdt.setprop_u32(node, "data-offset", buf_ptr)
        fdt.setprop_u32(node, "data-size", len(view))
        chunks.append((view, -len(view) % 4))
        buf_ptr += (len(view) + 3) & ~3
    fdt.pack()
    out = bytearray(fdt.as_bytearray())
    out += b"\0" * (-len(out) % 4)
    if layout.mode == "position":
        if layout.base < len(out):
            raise InputError(f"external data position {layout.base:#x} overlaps the signed tree ({len(out):#x} bytes)")
        out += b"\0" * (layout.base - len(out))
    parts: list = [bytes(out)]
    for view, pad in chunks:
        parts += [view, b"\0" * pad]
    return parts


def _join_in_place_libfdt(fdt: libfdt.Fdt, payloads: _Payloads) -> bytearray:
    from .regions import property_spans
    fdt.resize(fdt.totalsize() + sum((len(v) + 3) & ~3 for v in payloads.views.values()))
    # libfdt lays the tree out around zero-filled values; the payloads are then copied into
    # those values (pylibfdt only takes bytes, and a bytes copy of a large image is costly).
    for name, view in payloads.views.items():
        fdt.setprop(fdt.path_offset(f"{t.IMAGES}/{name}"), "data", bytes(len(view)))
    out = fdt.as_bytearray()
    spans = property_spans(out, "data")
    for name, view in payloads.views.items():
        start, length = spans[f"{t.IMAGES}/{name}"]
        out[start:start + length] = view
    return out


def _add_missing_hashes(blob: bytes, hash_name: str) -> bytes:
    """Give every image without a hash node a ``hash-1`` (a configuration signature covers an
    image through its hash nodes; U-Boot refuses an image that has none)."""
    fdt = t.open_fdt(blob)
    bare = [i for i in t.subnodes(fdt, t.IMAGES) if not t.hash_children(fdt, i)]
    if not bare:
        return blob

    def add(work: libfdt.Fdt) -> None:
        for image in bare:
            node = work.add_subnode(work.path_offset(f"{t.IMAGES}/{image}"), "hash-1")
            work.setprop(node, "algo", hash_name.encode() + b"\0")

    return t.edit_tree(blob, 64 * len(bare) + 64, add, "cannot add hash nodes")


def _add_signature_nodes(blob: bytes, confs: Sequence[str], algo: str, pad: str,
                         key_name_hint: str, image_signatures: bool) -> bytes:
    """Give each named configuration (and, if asked, each image) a signature node to sign."""
    images = t.subnodes(t.open_fdt(blob), t.IMAGES)
    return t.edit_tree(blob, 4096 * (len(confs) + 4) + 64 * len(images),
                       lambda fdt: _write_signature_nodes(fdt, confs, algo, pad, key_name_hint, image_signatures),
                       "cannot add signature nodes")


def _write_signature_nodes(fdt: libfdt.Fdt, confs: Sequence[str], algo: str, pad: str,
                           key_name_hint: str, image_signatures: bool) -> None:
    def add(path: str, props: list[tuple[str, bytes]]) -> None:
        parent = fdt.path_offset(path)
        node = fdt.add_subnode(parent, "signature-1")
        # dtc keeps source order; libfdt inserts a new property first, so add them reversed.
        for name, value in reversed(props):
            fdt.setprop(node, name, value)

    def strz(*values: str) -> bytes:
        return b"".join(v.encode() + b"\0" for v in values)

    common = [("algo", strz(algo)), ("key-name-hint", strz(key_name_hint))]
    if pad != "pkcs-1.5":
        common.append(("padding", strz(pad)))
    if image_signatures:
        for image in t.subnodes(fdt, t.IMAGES):
            if not any(n.startswith("signature") for n in t.subnodes(fdt, f"{t.IMAGES}/{image}")):
                add(f"{t.IMAGES}/{image}", common)
    for conf in confs:
        props = []
        for prop, _ in t.conf_image_refs(fdt, conf):
            if prop not in props:
                props.append(prop)
        if not props:
            raise InputError(f"configuration {conf} references no images")
        add(f"{t.CONFIGS}/{conf}", common + [("sign-images", strz(*props))])


# ---------------------------------------------------------------------------------------------
# Planning: which signature nodes, with which node lists.

def _config_node_list(fdt: libfdt.Fdt, conf: str, sig: str) -> list[str]:
    """mkimage's hashed-nodes for one configuration signature (fit_config_get_hash_list)."""
    conf_path, sig_path = f"{t.CONFIGS}/{conf}", f"{t.CONFIGS}/{conf}/{sig}"
    sign_images = t.getprop(fdt, sig_path, "sign-images")
    allow_missing = sign_images is None
    names = t.DEFAULT_SIGN_IMAGES if allow_missing else t.stringlist(sign_images)
    if not names:
        raise InputError(f"{sig_path}: empty sign-images")
    images = set(t.subnodes(fdt, t.IMAGES))
    nodes = ["/", conf_path]
    count = 0
    for prop in names:
        for entry in t.stringlist(t.getprop(fdt, conf_path, prop)):
            if entry not in images:
                if allow_missing:
                    continue
                raise InputError(f"{sig_path}: configuration property {prop!r} names missing image {entry!r}")
            nodes.append(f"{t.IMAGES}/{entry}")
            hashes_ = t.hash_children(fdt, entry)
            if not hashes_:
                raise InputError(f"image {entry} has no hash node: {sig_path} cannot cover it")
            nodes.extend(f"{t.IMAGES}/{entry}/{h}" for h in hashes_)
            if "cipher" in t.subnodes(fdt, f"{t.IMAGES}/{entry}"):
                nodes.append(f"{t.IMAGES}/{entry}/cipher")
            count += 1
    if not count:
        raise InputError(f"{sig_path}: no images to sign in configuration {conf}")
    # U-Boot >= 2026.04 (and Debian's patched 2023.01) rebuild the list from every image the
    # configuration references and refuse anything less.
    referenced = {img for _, img in t.conf_image_refs(fdt, conf)}
    missing = sorted(referenced - {n.rsplit("/", 1)[1] for n in nodes if n.count("/") == 2})
    if missing:
        props = sorted({p for p, img in t.conf_image_refs(fdt, conf) if img in missing})
        raise InputError(f"{sig_path} would not cover image(s) {', '.join(missing)} referenced by "
                         f"{', '.join(props)}: current U-Boot refuses such a FIT; list every image "
                         f"property in sign-images")
    return nodes


def _plan(blob: bytes, key, confs: Sequence[str] | None, key_name_hint: str | None,
          algo: str | None, pad: str | None, image_signatures: bool) -> tuple[bytes, list[SignatureNode], bool]:
    blob = _add_missing_hashes(blob, (algo or algo_for_key(key.public_key())).split(",", 1)[0])
    fdt = t.open_fdt(blob)
    all_confs = t.subnodes(fdt, t.CONFIGS) if "configurations" in t.subnodes(fdt, "/") else []
    if confs:
        unknown = [c for c in confs if c not in all_confs]
        if unknown:
            raise UsageError(f"no configuration {', '.join(unknown)} in the FIT (has: {', '.join(all_confs) or 'none'})")
    existing = [c for c in (confs or all_confs)
                if any(n.startswith("signature") for n in t.subnodes(fdt, f"{t.CONFIGS}/{c}"))]
    image_sig_exists = any(n.startswith("signature") for img in t.subnodes(fdt, t.IMAGES)
                           for n in t.subnodes(fdt, f"{t.IMAGES}/{img}"))
    public = key.public_key()
    selected = list(confs or all_confs)
    # Nodes to add: for configurations named with --config that have none; or, when the FIT carries
    # no signature node at all, for every configuration. Existing nodes are signed as they are.
    if confs:
        to_add = [c for c in selected if c not in existing]
    elif not (existing or image_sig_exists):
        to_add = selected
    else:
        to_add = []
    if to_add or image_signatures:
        hint = key_name_hint or getattr(key, "label", None)
        if not hint:
            raise UsageError("give --key-name-hint: the FIT has no signature node naming the key")
        blob = _add_signature_nodes(blob, to_add, algo or algo_for_key(public), pad or "pkcs-1.5",
                                    hint, image_signatures)
        fdt = t.open_fdt(blob)
    if not selected and not image_signatures and not image_sig_exists:
        raise InputError("the FIT has no configurations to sign (use --image-signatures for image signatures)")

    plans: list[SignatureNode] = []
    for image in t.subnodes(fdt, t.IMAGES):
        for sig in (n for n in t.subnodes(fdt, f"{t.IMAGES}/{image}") if n.startswith("signature")):
            plans.append(_node_plan(fdt, f"{t.IMAGES}/{image}/{sig}", "image", algo, key_name_hint, public))
    for conf in selected:
        for sig in (n for n in t.subnodes(fdt, f"{t.CONFIGS}/{conf}") if n.startswith("signature")):
            plan = _node_plan(fdt, f"{t.CONFIGS}/{conf}/{sig}", "config", algo, key_name_hint, public)
            plan.hashed_nodes = _config_node_list(fdt, conf, sig)
            plans.append(plan)
    if not plans:
        raise InputError("nothing to sign: no signature nodes")
    return blob, plans, algo is not None


def _node_plan(fdt, path: str, kind: str, algo_opt: str | None, hint_opt: str | None, public) -> SignatureNode:
    algo = algo_opt or t.getstr(fdt, path, "algo")
    if not algo:
        raise InputError(f"signature node {path} has no 'algo' (give --algo)")
    hash_name = algo.split(",", 1)[0]
    if hash_name not in HASHES:
        raise InputError(f"signature node {path}: unsupported hash in algo {algo!r}")
    check_algo_matches_key(algo, public)
    hint = t.getstr(fdt, path, "key-name-hint")
    if hint_opt and hint and hint != hint_opt:
        raise UsageError(f"signature node {path} names key {hint!r}, not {hint_opt!r}")
    if not hint:
        raise InputError(f"signature node {path} has no key-name-hint")
    pad = t.getstr(fdt, path, "padding") or "pkcs-1.5"
    if pad not in ("pkcs-1.5", "pss"):
        raise InputError(f"signature node {path}: unknown padding {pad!r}")
    if pad == "pss" and not isinstance(public, rsa.RSAPublicKey):
        raise InputError(f"signature node {path}: PSS padding needs an RSA key")
    return SignatureNode(path, kind, algo, pad, hint)


# ---------------------------------------------------------------------------------------------
# The passes.

SignFn = Callable[[SignatureNode, bytes], bytes]


def _write_signature(fdt: libfdt.Fdt, node: SignatureNode, value: bytes, timestamp: int,
                     write_algo: bool, comment: str | None) -> None:
    """fit_image_write_sig: every new property lands first, so the order is mkimage's."""
    off = fdt.path_offset(node.path)
    string_size = fdt.size_dt_strings()  # sampled before any property of this signature is added
    fdt.setprop(off, "value", value)
    fdt.setprop(off, "signer-name", SIGNER_NAME.encode() + b"\0")
    fdt.setprop(off, "signer-version", __version__.encode() + b"\0")
    if comment:
        fdt.setprop(off, "comment", comment.encode() + b"\0")
    fdt.setprop(off, "timestamp", timestamp.to_bytes(4, "big"))
    if node.kind == "config":
        fdt.setprop(off, "hashed-nodes", b"".join(n.encode() + b"\0" for n in node.hashed_nodes))
        fdt.setprop(off, "hashed-strings", (0).to_bytes(4, "big") + string_size.to_bytes(4, "big"))
    if write_algo:
        fdt.setprop(off, "algo", node.algo.encode() + b"\0")


def _config_digest(fdt: libfdt.Fdt, node: SignatureNode) -> bytes:
    blob = fdt.as_bytearray()
    regions = find_regions(blob, frozenset(node.hashed_nodes), add_string_tab=True)
    h = hashes.Hash(HASHES[node.hash_name]())
    for start, size in regions:
        h.update(bytes(blob[start:start + size]))
    return h.finalize()


def _run_pass(blob: bytes, size_inc: int, plans: list[SignatureNode], image_digests: dict,
              sign: SignFn, timestamp: int, write_algo: bool, comment: str | None) -> bytes:
    fdt = libfdt.Fdt(bytearray(blob))
    if size_inc:
        fdt.resize(fdt.totalsize() + size_inc)
    by_path = {p.path: p for p in plans}
    for image in t.subnodes(fdt, t.IMAGES):
        for child in t.subnodes(fdt, f"{t.IMAGES}/{image}"):
            path = f"{t.IMAGES}/{image}/{child}"
            if child.startswith("hash"):
                algo = t.getstr(fdt, path, "algo")
                fdt.setprop(fdt.path_offset(path), "value", image_digests[(image, algo)])
            elif path in by_path:
                node = by_path[path]
                value = sign(node, image_digests[(image, node.hash_name)])
                _write_signature(fdt, node, value, timestamp, write_algo, comment)
    for node in plans:
        if node.kind == "config":
            value = sign(node, _config_digest(fdt, node))
            _write_signature(fdt, node, value, timestamp, write_algo, comment)
    return bytes(fdt.as_bytearray())


def _signature_value(key, node: SignatureNode, digest: bytes) -> bytes:
    algo = HASHES[node.hash_name]()
    if isinstance(key, rsa.RSAPrivateKey):
        pad = (padding.PSS(padding.MGF1(algo), padding.PSS.DIGEST_LENGTH) if node.padding == "pss"
               else padding.PKCS1v15())
        return key.sign(digest, pad, utils.Prehashed(algo))
    return ecdsa_raw(key.sign(digest, ec.ECDSA(utils.Prehashed(algo))), (key.curve.key_size + 7) // 8)


def _placeholder_len(public) -> int:
    if isinstance(public, rsa.RSAPublicKey):
        return public.key_size // 8
    return 2 * ((public.curve.key_size + 7) // 8)


def _self_check(blob: bytes, plans: list[SignatureNode], public) -> None:
    """Verify each configuration signature as U-Boot will: node list rebuilt from the config."""
    from .verify import _verify_value, config_digest
    fdt = t.open_fdt(blob)
    for node in plans:
        value = t.getprop(fdt, node.path, "value")
        if node.kind == "config":
            conf = node.path.split("/")[2]
            digest = config_digest(fdt, blob, conf, node.path, node.hash_name)
        else:
            digest = node.digest
        try:
            _verify_value(public, node.algo, node.padding, digest, value)
        except InvalidSignature:
            raise VerificationError(f"{node.path}: the written signature does not verify; nothing written") from None


@t.fdt_errors("cannot sign the FIT")
def sign_fit(blob: bytes, key, *, configs: Sequence[str] | None = None, key_name_hint: str | None = None,
             algo: str | None = None, padding_name: str | None = None, image_signatures: bool = False,
             timestamp: int | None = None, comment: str | None = None,
             progress: Callable[[int, int], None] | None = None) -> SignedFit:
    """Sign a FIT with ``key`` (any ``cryptography`` private key, e.g. a token key)."""
    Header.parse(blob)
    t.check_fit_structure(blob)
    if padding_name not in (None, "pkcs-1.5", "pss"):
        raise UsageError(f"unknown padding {padding_name!r} (pkcs-1.5 or pss)")
    timestamp = source_date_epoch() if timestamp is None else timestamp
    packed, payloads = split_payloads(blob)
    prepared, plans, write_algo = _plan(packed, key, configs, key_name_hint, algo, padding_name, image_signatures)

    # Every image digest the passes need, computed once (hash nodes and image signatures).
    fdt = t.open_fdt(prepared)
    wanted: dict[tuple[str, str], None] = {}
    for image in t.subnodes(fdt, t.IMAGES):
        for child in t.subnodes(fdt, f"{t.IMAGES}/{image}"):
            path = f"{t.IMAGES}/{image}/{child}"
            if child.startswith("hash"):
                algo_name = t.getstr(fdt, path, "algo")
                if not algo_name:
                    raise InputError(f"hash node {path} has no 'algo'")
                wanted[(image, algo_name)] = None
    for node in plans:
        if node.kind == "image":
            wanted[(node.path.split("/")[2], node.hash_name)] = None
    datas = {image: payloads.views.get(image) for image in {i for i, _ in wanted}}
    missing = sorted(i for i, v in datas.items() if v is None)
    if missing:
        raise InputError(f"image(s) {', '.join(missing)} have no data")
    total = sum(len(datas[i]) for i, _ in wanted)
    done = 0

    def step(n: int) -> None:
        nonlocal done
        done += n
        if progress:
            progress(done, total)

    # One pass over each image's data for all its hash algorithms, in pieces (see _chunks).
    image_digests = {}
    for image in dict.fromkeys(i for i, _ in wanted):
        algos = [a for i, a in wanted if i == image]
        view, start = datas[image], payloads.offsets.get(image)
        pieces = _chunks(payloads.source, start, len(view)) if start is not None else [view]
        found = t.digests(algos, pieces, lambda n, k=len(algos): step(n * k))
        image_digests.update(((image, a), found[a]) for a in algos)
    del datas

    placeholder = b"\0" * _placeholder_len(key.public_key())
    digests: dict[str, bytes] = {}

    def record(node: SignatureNode, digest: bytes) -> bytes:
        digests[node.path] = digest
        return placeholder

    for passes, size_inc in enumerate(range(0, 64 * 1024, 1024), start=1):
        try:
            _run_pass(prepared, size_inc, plans, image_digests, record, timestamp, write_algo, comment)
            break
        except libfdt.FdtException as err:
            if err.err != -libfdt.NOSPACE:
                raise InputError(f"cannot write signatures: {err}") from None
    else:
        raise InputError("cannot write signatures: the FIT would grow by more than 64 KiB")

    values = {}
    for node in plans:
        node.digest = digests[node.path]
        values[node.path] = _signature_value(key, node, node.digest)

    def real(node: SignatureNode, digest: bytes) -> bytes:
        if digest != digests[node.path]:
            raise AssertionError(f"digest of {node.path} changed between passes")
        return values[node.path]

    out = _run_pass(prepared, size_inc, plans, image_digests, real, timestamp, write_algo, comment)
    _self_check(out, plans, key.public_key())
    parts = join_payloads(out, payloads)
    starts = {id(v): payloads.offsets[n] for n, v in payloads.views.items() if n in payloads.offsets}
    return SignedFit(parts, plans, passes, payloads.source, [starts.get(id(p)) for p in parts])
