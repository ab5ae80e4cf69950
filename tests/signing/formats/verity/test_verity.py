"""dm-verity tree, root hash and root-hash signature: checked against veritysetup and openssl."""

from __future__ import annotations

import datetime
import hashlib
import os
import re
import subprocess
import uuid
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID

from segway_sign.errors import InputError, OutputExistsError, UsageError, VerificationError
from segway_sign.formats.verity import sign as verity_sign
from segway_sign.formats.verity import tree as verity_tree

UUID = uuid.UUID("11111111-2222-3333-4444-555555555555")


def self_signed(key, cn="verity test") -> x509.Certificate:
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])
    now = datetime.datetime(2026, 1, 1, tzinfo=datetime.timezone.utc)
    return (
        x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(x509.random_serial_number()).not_valid_before(now)
        .not_valid_after(now + datetime.timedelta(days=3650))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )


@pytest.fixture(scope="module")
def rsa_key():
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture(scope="module")
def rsa_cert(rsa_key):
    return self_signed(rsa_key)


def make_image(path: Path, size: int, seed: int = 1) -> Path:
    path.write_bytes(os.urandom(size) if seed else b"\0" * size)
    return path


def veritysetup(*args: str) -> str:
    res = subprocess.run(["veritysetup", *args], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    return res.stdout


def veritysetup_root(stdout: str) -> str:
    return re.search(r"Root hash:\s+([0-9a-f]+)", stdout).group(1)


def ours(data: Path, out: Path, params: verity_tree.VerityParams, offset: int = 0) -> verity_tree.VerityTree:
    with open(data, "rb") as d, open(out, "w+b") as o:
        return verity_tree.write_tree(d, data.stat().st_size, o, params, offset)


# Block counts chosen to hit 0, 1, 2 and 3 tree levels and partial last hash blocks.
@pytest.mark.parametrize(
    "blocks,dbs,hbs,superblock,salt",
    [
        (1, 4096, 4096, True, "00ff"),
        (2, 4096, 4096, False, "a5" * 32),
        (128, 4096, 4096, True, "a5" * 32),
        (300, 4096, 4096, True, "-"),
        (129, 1024, 512, False, "0102030405"),
        (2100, 512, 512, True, "ab" * 100),
        (70000, 512, 1024, False, "77" * 16),
    ],
)
def test_tree_is_byte_identical_to_veritysetup(tmp_path, blocks, dbs, hbs, superblock, salt):
    data = make_image(tmp_path / "data.img", blocks * dbs)
    params = verity_tree.VerityParams(
        salt=b"" if salt == "-" else bytes.fromhex(salt), data_block_size=dbs, hash_block_size=hbs,
        superblock=superblock, uuid=UUID if superblock else None,
    )
    tree = ours(data, tmp_path / "ours.hash", params)
    args = ["format", str(data), str(tmp_path / "ref.hash"), f"--data-block-size={dbs}",
            f"--hash-block-size={hbs}", f"--salt={salt}"]
    args += [f"--uuid={UUID}"] if superblock else ["--no-superblock"]
    ref_root = veritysetup_root(veritysetup(*args))
    assert tree.root_hex == ref_root
    assert (tmp_path / "ours.hash").read_bytes() == (tmp_path / "ref.hash").read_bytes()
    veritysetup("verify", str(data), str(tmp_path / "ours.hash"), ref_root,
                *([] if superblock else ["--no-superblock", f"--data-block-size={dbs}",
                                         f"--hash-block-size={hbs}", f"--salt={salt}"]))


@pytest.mark.parametrize("superblock", [True, False])
def test_appended_layout_matches_veritysetup_hash_offset(tmp_path, rsa_key, rsa_cert, superblock):
    data = make_image(tmp_path / "rootfs.img", 1000 * 4096)
    params = verity_tree.VerityParams(salt=bytes(range(32)), superblock=superblock,
                                 uuid=UUID if superblock else None)
    res = verity_sign.sign_image(data, tmp_path / "out", rsa_key, rsa_cert, params, appended=True)
    ref = tmp_path / "ref.img"
    ref.write_bytes(data.read_bytes())
    args = ["format", str(ref), str(ref), f"--hash-offset={1000 * 4096}", f"--salt={bytes(range(32)).hex()}"]
    args += [f"--uuid={UUID}"] if superblock else ["--no-superblock"]
    assert veritysetup_root(veritysetup(*args)) == res.tree.root_hex
    assert (tmp_path / "out" / "rootfs.verity.img").read_bytes() == ref.read_bytes()
    assert data.read_bytes() == ref.read_bytes()[: 1000 * 4096]  # input untouched
    verity_sign.verify_dir(tmp_path / "out", [rsa_cert])


@pytest.mark.parametrize("blocks, data_block", [(2048, 4096), (3, 4096), (1001, 512), (1, 4096)],
                         ids=["two processes", "one process", "padded to the hash area", "one block"])
def test_appended_image_digest_is_the_written_files(tmp_path, rsa_key, rsa_cert, blocks, data_block):
    """The appended image's sha256, taken beside the tree (digest_image), is the sha256 of the file
    as written; the tree, hashed from the kernel's copy, is veritysetup's."""
    size = blocks * data_block
    data = make_image(tmp_path / "rootfs.img", size)
    params = verity_tree.VerityParams(salt=bytes(range(32)), uuid=UUID, data_block_size=data_block)
    res = verity_sign.sign_image(data, tmp_path / "out", rsa_key, rsa_cert, params, appended=True,
                                 digest_image=True)
    image = tmp_path / "out" / "rootfs.verity.img"
    assert res.sha256 == {image.name: hashlib.sha256(image.read_bytes()).hexdigest()}
    offset = -(-size // 4096) * 4096
    ref = tmp_path / "ref.img"
    ref.write_bytes(data.read_bytes() + b"\0" * (offset - size))
    out = veritysetup("format", str(ref), str(ref), f"--hash-offset={offset}", f"--salt={bytes(range(32)).hex()}",
                      f"--uuid={UUID}", f"--data-block-size={data_block}", f"--data-blocks={blocks}")
    assert veritysetup_root(out) == res.tree.root_hex
    assert image.read_bytes() == ref.read_bytes()
    verity_sign.verify_dir(tmp_path / "out", [rsa_cert])
    # Without digest_image (the CLI) nothing is hashed twice, and the output is the same.
    again = verity_sign.sign_image(data, tmp_path / "out2", rsa_key, rsa_cert, params, appended=True)
    assert again.sha256 == {} and (tmp_path / "out2" / image.name).read_bytes() == image.read_bytes()


def test_sign_image_outputs_env_and_signature_openssl_verifies(tmp_path, rsa_key, rsa_cert):
    data = make_image(tmp_path / "rootfs.img", 257 * 4096)
    params = verity_tree.VerityParams(salt=b"\x12" * 32, uuid=UUID)
    seen = []
    res = verity_sign.sign_image(data, tmp_path / "out", rsa_key, rsa_cert, params, progress=seen.append)
    assert sum(seen) == 257 * 4096
    out = tmp_path / "out"
    assert sorted(p.name for p in out.iterdir()) == sorted(
        ["rootfs.hashtree", "rootfs.roothash", "rootfs.roothash.p7s", "verity.env"])
    env = verity_sign.parse_env((out / "verity.env").read_text())
    assert env["VERITY_ROOT_HASH"] == res.tree.root_hex == (out / "rootfs.roothash").read_text()
    assert env["VERITY_DATA_BLOCKS"] == "257" and env["VERITY_HASH_START_BLOCK"] == "1"
    assert env["VERITY_SALT"] == "12" * 32 and env["VERITY_ROOT_HASH_SIG"] == "rootfs.roothash.p7s"
    # veritysetup reads the superblock and agrees with the root hash.
    veritysetup("verify", str(data), str(out / "rootfs.hashtree"), env["VERITY_ROOT_HASH"])
    # openssl checks the PKCS#7 the way the kernel does: detached, binary, over the hex string.
    (tmp_path / "cert.pem").write_bytes(rsa_cert.public_bytes(serialization.Encoding.PEM))
    r = subprocess.run(
        ["openssl", "smime", "-verify", "-binary", "-inform", "DER", "-in", str(out / "rootfs.roothash.p7s"),
         "-content", str(out / "rootfs.roothash"), "-certfile", str(tmp_path / "cert.pem"),
         "-CAfile", str(tmp_path / "cert.pem"), "-nointern", "-purpose", "any", "-out", os.devnull],
        capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    # The kernel form: no signed attributes and no certificates inside.
    asn1 = subprocess.run(["openssl", "cms", "-cmsout", "-print", "-inform", "DER", "-in",
                           str(out / "rootfs.roothash.p7s")], capture_output=True, text=True).stdout
    assert re.search(r"signedAttrs:\s*<ABSENT>", asn1) and re.search(r"certificates:\s*<ABSENT>", asn1)
    ok = verity_sign.verify_dir(out, [rsa_cert], data_path=data)
    assert ok.signer == rsa_cert


def test_ec_key_signature(tmp_path):
    key = ec.generate_private_key(ec.SECP256R1())
    cert = self_signed(key, "ec")
    data = make_image(tmp_path / "rootfs.img", 20 * 4096)
    verity_sign.sign_image(data, tmp_path / "out", key, cert, verity_tree.VerityParams(salt=b"", uuid=UUID))
    assert verity_sign.verify_dir(tmp_path / "out", [cert], data_path=data).signer == cert


def test_flipped_data_block_fails_verification_and_veritysetup(tmp_path, rsa_key, rsa_cert):
    data = make_image(tmp_path / "rootfs.img", 300 * 4096)
    verity_sign.sign_image(data, tmp_path / "out", rsa_key, rsa_cert, verity_tree.VerityParams(salt=b"s", uuid=UUID))
    raw = bytearray(data.read_bytes())
    raw[150 * 4096 + 7] ^= 1
    data.write_bytes(raw)
    with pytest.raises(VerificationError, match="root hash mismatch"):
        verity_sign.verify_dir(tmp_path / "out", [rsa_cert], data_path=data)
    env = verity_sign.parse_env((tmp_path / "out" / "verity.env").read_text())
    r = subprocess.run(["veritysetup", "verify", str(data), str(tmp_path / "out" / "rootfs.hashtree"),
                        env["VERITY_ROOT_HASH"]], capture_output=True, text=True)
    assert r.returncode != 0


def test_tampered_tree_signature_and_wrong_cert_fail(tmp_path, rsa_key, rsa_cert):
    data = make_image(tmp_path / "rootfs.img", 300 * 4096)
    out = tmp_path / "out"
    verity_sign.sign_image(data, out, rsa_key, rsa_cert, verity_tree.VerityParams(salt=b"s", uuid=UUID))
    other = self_signed(rsa.generate_private_key(public_exponent=65537, key_size=2048), "other")
    with pytest.raises(VerificationError, match="trusted"):
        verity_sign.verify_dir(out, [other], data_path=data)
    good_tree = (out / "rootfs.hashtree").read_bytes()
    tree = bytearray(good_tree)
    tree[4096 + 40] ^= 0x80  # a level-0 entry: the data still gives the right root, the stored tree is wrong
    (out / "rootfs.hashtree").write_bytes(tree)
    with pytest.raises(VerificationError, match="hash tree block at offset 4096"):
        verity_sign.verify_dir(out, [rsa_cert], data_path=data)
    (out / "rootfs.hashtree").write_bytes(good_tree)
    verity_sign.verify_dir(out, [rsa_cert], data_path=data)
    sig = bytearray((out / "rootfs.roothash.p7s").read_bytes())
    sig[-5] ^= 1
    (out / "rootfs.roothash.p7s").write_bytes(sig)
    with pytest.raises(VerificationError, match="does not verify"):
        verity_sign.verify_dir(out, [rsa_cert], data_path=data)


def test_bad_inputs_are_one_line_errors(tmp_path, rsa_key, rsa_cert):
    params = verity_tree.VerityParams(salt=b"", uuid=UUID)
    odd = tmp_path / "odd.img"
    odd.write_bytes(b"x" * 5000)
    with pytest.raises(InputError, match="not a multiple of the data block size 4096"):
        verity_sign.sign_image(odd, tmp_path / "o1", rsa_key, rsa_cert, params)
    assert not (tmp_path / "o1").exists()
    with pytest.raises(InputError, match="cannot read"):
        verity_sign.sign_image(tmp_path / "missing.img", tmp_path / "o2", rsa_key, rsa_cert, params)
    with pytest.raises(UsageError, match="power of two"):
        verity_tree.VerityParams(salt=b"", data_block_size=3000, uuid=UUID)
    with pytest.raises(UsageError, match="not hex"):
        verity_tree.parse_salt("zz")
    good = make_image(tmp_path / "good.img", 4096)
    (tmp_path / "o3").mkdir()
    with pytest.raises(OutputExistsError):
        verity_sign.sign_image(good, tmp_path / "o3", rsa_key, rsa_cert, params)
    wrong_cert = self_signed(ec.generate_private_key(ec.SECP256R1()))
    with pytest.raises(InputError, match="does not belong"):
        verity_sign.sign_image(good, tmp_path / "o4", rsa_key, wrong_cert, params)
    assert not (tmp_path / "o4").exists()


def test_memory_stays_flat_for_a_large_sparse_image(tmp_path, rsa_key, rsa_cert):
    """Hash 512 MiB (sparse) in a child process and check its peak RSS stays far below the image size."""
    img = tmp_path / "big.img"
    with open(img, "wb") as f:
        f.truncate(512 << 20)
    code = (
        "import sys, uuid; from pathlib import Path;"
        "from segway_sign.formats.verity import tree as v;"
        f"p = v.VerityParams(salt=b'x', uuid=uuid.UUID('{UUID}'));"
        f"d = open('{img}', 'rb'); o = open('{tmp_path / 'big.hash'}', 'w+b');"
        f"t = v.write_tree(d, {512 << 20}, o, p);"
        # VmHWM belongs to this address space; ru_maxrss would carry over the forking pytest
        # process's peak across exec.
        "hwm = [l.split()[1] for l in open('/proc/self/status') if l.startswith('VmHWM:')][0];"
        "print(t.root_hex, hwm)"
    )
    import sys
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr
    root, rss_kib = out.stdout.split()
    assert int(rss_kib) < 120 * 1024, f"peak RSS {rss_kib} KiB"
    ref = veritysetup("format", str(img), str(tmp_path / "ref.hash"), "--salt=78", f"--uuid={UUID}")
    assert veritysetup_root(ref) == root


def _mutate(rng, data: bytes) -> bytes:
    """One fixed-seed mutation: bit flip, byte set, truncation, insertion, deletion, or random bytes."""
    b = bytearray(data)
    kind = rng.randrange(6)
    if kind == 0 and b:
        b[rng.randrange(len(b))] ^= 1 << rng.randrange(8)
    elif kind == 1 and b:
        b[rng.randrange(len(b))] = rng.choice(b"\x00\n\r=\xff0 -'\"$`;")
    elif kind == 2 and b:
        del b[rng.randrange(len(b)):]
    elif kind == 3:
        at = rng.randrange(len(b) + 1)
        b[at:at] = bytes(rng.randrange(256) for _ in range(rng.randrange(1, 9)))
    elif kind == 4 and b:
        at = rng.randrange(len(b))
        del b[at:at + rng.randrange(1, 24)]
    else:
        b = bytearray(rng.randbytes(rng.randrange(80)))
    return bytes(b)


@pytest.mark.parametrize("appended", [False, True])
def test_mutated_inputs_never_pass_and_never_raise_anything_else(tmp_path, rsa_key, rsa_cert, appended):
    """Every byte the device reads — verity.env, roothash, roothash.p7s, the superblock — mutated with a
    fixed seed: verify_dir raises a one-line SegwayError for each change, and nothing else escapes."""
    import random
    import shutil

    from segway_sign.errors import SegwayError

    data = make_image(tmp_path / "rootfs.img", 64 * 4096)
    good = tmp_path / "good"
    res = verity_sign.sign_image(data, good, rsa_key, rsa_cert,
                                 verity_tree.VerityParams(salt=b"\x01" * 32, uuid=UUID), appended=appended)
    tree_file = res.files["image"] if appended else res.files["hashtree"]
    sb_offset = res.tree.layout.hash_area_offset
    rng = random.Random(20260101 + appended)
    targets = ["verity.env"] * 4 + [res.files["roothash"], res.files["signature"], "superblock"]
    refused = 0
    for case in range(200):
        work = tmp_path / f"case{case}"
        shutil.copytree(good, work)
        target = rng.choice(targets)
        if target == "superblock":
            path = work / tree_file
            raw = bytearray(path.read_bytes())
            sb = _mutate(rng, bytes(raw[sb_offset:sb_offset + 512]))[:512].ljust(512, b"\0")
            raw[sb_offset:sb_offset + 512] = sb
            changed = bytes(raw) != path.read_bytes()
            path.write_bytes(raw)
        else:
            path = work / target
            before = path.read_bytes()
            after = _mutate(rng, before)
            changed = after != before
            path.write_bytes(after)
        try:
            verity_sign.verify_dir(work, [rsa_cert], data_path=data)
        except SegwayError as e:
            assert "\n" not in str(e), (target, str(e))
            refused += 1
        else:
            assert not changed, f"case {case}: a mutated {target} was accepted"
        shutil.rmtree(work)
    assert refused > 150


def test_file_names_the_env_cannot_carry_are_refused_before_signing(tmp_path, rsa_key, rsa_cert):
    params = verity_tree.VerityParams(salt=b"", uuid=UUID)
    for name in ("my rootfs.img", "root$(id).img", "rootfs'.img", "r\u00f6otfs.img"):
        img = make_image(tmp_path / name, 4096)
        with pytest.raises(UsageError, match=r"letters, digits and \._\+-"):
            verity_sign.sign_image(img, tmp_path / "out", rsa_key, rsa_cert, params)
        assert not (tmp_path / "out").exists()
    with pytest.raises(UsageError, match="letters, digits"):
        verity_sign.sign_image(make_image(tmp_path / "ok.img", 4096), tmp_path / "out", rsa_key, rsa_cert, params,
                               appended=True, name="../x")
