"""U-Boot's public-key nodes in a control DTB (what ``mkimage -K`` writes, what U-Boot reads)."""

from __future__ import annotations

import libfdt
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from ...errors import InputError, UsageError
from .tree import fdt_errors, getprop, getstr, open_fdt, subnodes

SIG_NODE = "/signature"
_CURVES = {"prime256v1": ec.SECP256R1, "secp384r1": ec.SECP384R1}
_CURVE_NAMES = {"secp256r1": "prime256v1", "secp384r1": "secp384r1"}


def algo_for_key(public_key, hash_name: str | None = None) -> str:
    """The FIT ``algo`` string a key signs with (mkimage names)."""
    if isinstance(public_key, rsa.RSAPublicKey):
        return f"{hash_name or 'sha256'},rsa{public_key.key_size}"
    if isinstance(public_key, ec.EllipticCurvePublicKey):
        size = public_key.curve.key_size
        if size not in (256, 384):
            raise UsageError(f"EC curve {public_key.curve.name} is not supported by U-Boot (P-256/P-384 only)")
        return f"{hash_name or ('sha256' if size == 256 else 'sha384')},ecdsa{size}"
    raise UsageError("only RSA and EC keys sign FITs")


def check_algo_matches_key(algo: str, public_key) -> None:
    crypto = algo.split(",", 1)[-1]
    expected = algo_for_key(public_key).split(",", 1)[1]
    if crypto != expected:
        raise UsageError(f"signature algo {algo!r} does not fit the key (a {expected} key)")


def _setprop(fdt: libfdt.Fdt, node: int, name: str, value: bytes) -> None:
    fdt.setprop(node, name, value)


def _ensure_node(fdt: libfdt.Fdt, parent: int, name: str) -> int:
    node = fdt.subnode_offset(parent, name, [libfdt.NOTFOUND])
    if node == -libfdt.NOTFOUND:
        node = fdt.add_subnode(parent, name)
    return node


def write_key_node(fdt: libfdt.Fdt, public_key, key_name_hint: str, algo: str, required: str | None) -> str:
    """Add or overwrite the key node in place; libfdt errors (e.g. NOSPACE) propagate."""
    root = fdt.path_offset("/")
    parent = _ensure_node(fdt, root, SIG_NODE[1:])
    hint = key_name_hint.encode() + b"\0"
    if isinstance(public_key, rsa.RSAPublicKey):
        # lib/rsa/rsa-sign.c rsa_add_verify_data: same properties, same order.
        nums = public_key.public_numbers()
        bits = public_key.key_size
        if bits % 32:
            raise UsageError(f"RSA key of {bits} bits: U-Boot needs a multiple of 32")
        n0_inverse = (-pow(nums.n, -1, 1 << 32)) % (1 << 32)
        r_squared = pow(2, 2 * bits, nums.n)
        name = f"key-{key_name_hint}"
        node = _ensure_node(fdt, parent, name)
        _setprop(fdt, node, "key-name-hint", hint)
        _setprop(fdt, node, "rsa,num-bits", bits.to_bytes(4, "big"))
        _setprop(fdt, node, "rsa,n0-inverse", n0_inverse.to_bytes(4, "big"))
        _setprop(fdt, node, "rsa,exponent", nums.e.to_bytes(8, "big"))
        _setprop(fdt, node, "rsa,modulus", nums.n.to_bytes(bits // 8, "big"))
        _setprop(fdt, node, "rsa,r-squared", r_squared.to_bytes(bits // 8, "big"))
    elif isinstance(public_key, ec.EllipticCurvePublicKey):
        # lib/ecdsa/ecdsa-libcrypto.c do_add: the node is named by the bare hint.
        curve = _CURVE_NAMES.get(public_key.curve.name)
        if curve is None:
            raise UsageError(f"EC curve {public_key.curve.name} is not supported by U-Boot")
        size = public_key.curve.key_size // 8
        nums = public_key.public_numbers()
        name = key_name_hint
        node = _ensure_node(fdt, parent, name)
        _setprop(fdt, node, "key-name-hint", hint)
        _setprop(fdt, node, "ecdsa,curve", curve.encode() + b"\0")
        _setprop(fdt, node, "ecdsa,x-point", nums.x.to_bytes(size, "big"))
        _setprop(fdt, node, "ecdsa,y-point", nums.y.to_bytes(size, "big"))
    else:
        raise UsageError("only RSA and EC keys can be added to a U-Boot DTB")
    _setprop(fdt, node, "algo", algo.encode() + b"\0")
    if required:
        _setprop(fdt, node, "required", required.encode() + b"\0")
    return f"{SIG_NODE}/{name}"


@fdt_errors("cannot add the key node")
def add_pubkey(dtb: bytes, public_key, key_name_hint: str, algo: str | None = None,
               required: str | None = "conf") -> bytes:
    """Return ``dtb`` with the key node added, growing the tree 1 KiB at a time like mkimage."""
    if required not in (None, "conf", "image"):
        raise UsageError(f"--required must be 'conf' or 'image', not {required!r}")
    algo = algo or algo_for_key(public_key)
    check_algo_matches_key(algo, public_key)
    fdt = open_fdt(dtb)
    for _ in range(64):
        try:
            work = libfdt.Fdt(fdt.as_bytearray())
            write_key_node(work, public_key, key_name_hint, algo, required)
            return bytes(work.as_bytearray())
        except libfdt.FdtException as err:
            if err.err != -libfdt.NOSPACE:
                raise InputError(f"cannot add the key node: {err}") from None
            fdt.resize(fdt.totalsize() + 1024)
    raise InputError("cannot add the key node: the DTB would grow beyond 64 KiB more")


def public_key_from_node(fdt: libfdt.Fdt, path: str):
    """The public key a control-DTB key node holds, checked for internal consistency."""
    curve = getstr(fdt, path, "ecdsa,curve")
    if curve is not None:
        if curve not in _CURVES:
            raise InputError(f"key node {path}: unsupported curve {curve!r}")
        x, y = getprop(fdt, path, "ecdsa,x-point"), getprop(fdt, path, "ecdsa,y-point")
        size = _CURVES[curve].key_size // 8
        if not x or not y or len(x) != size or len(y) != size:
            raise InputError(f"key node {path}: EC point has the wrong length")
        try:
            return ec.EllipticCurvePublicNumbers(int.from_bytes(x, "big"), int.from_bytes(y, "big"),
                                                 _CURVES[curve]()).public_key()
        except ValueError:
            raise InputError(f"key node {path}: the EC point is not on {curve}") from None
    modulus = getprop(fdt, path, "rsa,modulus")
    bits = getprop(fdt, path, "rsa,num-bits")
    if modulus is None or bits is None:
        raise InputError(f"key node {path} is neither an RSA nor an ECDSA key")
    n = int.from_bytes(modulus, "big")
    exp = getprop(fdt, path, "rsa,exponent")
    e = int.from_bytes(exp, "big") if exp else 65537
    if int.from_bytes(bits, "big") != n.bit_length() or len(modulus) * 8 != n.bit_length():
        raise InputError(f"key node {path}: rsa,num-bits does not match the modulus")
    if n % 2 == 0:
        raise InputError(f"key node {path}: rsa,modulus is even")
    n0 = getprop(fdt, path, "rsa,n0-inverse")
    if n0 is None or int.from_bytes(n0, "big") != (-pow(n, -1, 1 << 32)) % (1 << 32):
        raise InputError(f"key node {path}: rsa,n0-inverse does not match the modulus")
    try:
        return rsa.RSAPublicNumbers(e, n).public_key()
    except ValueError as err:
        raise InputError(f"key node {path}: not a valid RSA public key ({err})") from None


def key_nodes(fdt: libfdt.Fdt) -> list[str]:
    try:
        return [f"{SIG_NODE}/{n}" for n in subnodes(fdt, SIG_NODE)]
    except InputError:
        return []
