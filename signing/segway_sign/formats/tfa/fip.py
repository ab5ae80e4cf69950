"""TF-A Firmware Image Package (FIP): read, sign with a TBBR chain of trust (STM32MP1's or TF-A's
generic one, see ``tbbr.CHAINS``), pack with fiptool.

Reading is done here (ToC header ``0xAA640001``, 40-byte entries, a null-UUID terminator; see TF-A
``include/tools_share/firmware_image_package.h``); writing is left to TF-A's own ``fiptool`` so the
packed layout is exactly the one TF-A's BL2 parses.
"""

from __future__ import annotations

import shutil
import struct
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

from ...errors import InputError, SegwayError, UsageError
from . import tbbr

TOC_HEADER_NAME = 0xAA640001
TOC_HEADER = struct.Struct("<IIQ")
TOC_ENTRY = struct.Struct("<16sQQQ")
NULL_UUID = bytes(16)

# FIP entry names (fiptool's option names with '_') and UUIDs in ToC byte order.
UUIDS = {
    "tb_fw": "5ff9ec0b-4d22-3e4d-a544-c39d81c73f0a",
    "soc_fw": "47d4086d-4cfe-9846-9b95-2950cbbd5a00",
    "tos_fw": "05d0e189-53dc-1347-8d2b-500a4b7a3e38",
    "tos_fw_extra1": "0b70c29b-2a5a-7840-9f65-0a5682738288",
    "tos_fw_extra2": "8ea87bb1-cfa2-3f4d-85fd-e7bba50220d9",
    "nt_fw": "d6d0eea7-fcea-d54b-9782-9934f234b6e4",
    "hw_config": "08b8f1d9-c9cf-9349-a962-6fbc6b7265cc",
    "tb_fw_config": "6c0458ff-af6b-7d4f-82ed-aa27bc69bfd2",
    "soc_fw_config": "9979814b-0376-fb46-8c8e-8d267f7859e0",
    "tos_fw_config": "26257c1a-dbc6-7f47-8d96-c4c4b0248021",
    "nt_fw_config": "28da9815-93e8-7e44-ac66-1aaf801550f9",
    "fw_config": "5807e16a-8459-47be-8ed5-648e8dddab0e",
    "tb_fw_cert": "d6e269ea-5d63-e411-8d8c-9fbabe9956a5",
    "trusted_key_cert": "827ee890-f860-e411-a1b4-777a21b4f94c",
    "soc_fw_key_cert": "8ab8becc-f960-e411-9ad0-eb4822d8dcf8",
    "soc_fw_cert": "e2b20c20-5e63-e411-9ce8-abccf92bb666",
    "tos_fw_key_cert": "9477d603-fb60-e411-85dd-b7105b8cee04",
    "nt_fw_key_cert": "8ad5832a-fb60-e411-8aaf-df30bbc49859",
    "tos_fw_cert": "a49f4411-5e63-e411-8728-3f05722af33d",
    "nt_fw_cert": "8ec4c1f3-5d63-e411-a7a9-87ee40b23fa7",
    # STM32MP platform UUID (plat/st/common/include/plat_def_fip_uuid.h)
    "stm32mp_cfg_cert": "501d8dd2-8bce-49a5-84eb-559a9f2eaeaf",
}
UUID_BYTES = {name: bytes.fromhex(u.replace("-", "")) for name, u in UUIDS.items()}
NAME_BY_UUID = {v: k for k, v in UUID_BYTES.items()}

# tbbr certificate name -> FIP entry name, per chain of trust
_ENTRY_OF_CERT = {
    "stm32mp_cfg_cert": "stm32mp_cfg_cert",
    "tb_fw_cert": "tb_fw_cert",
    "trusted_key_cert": "trusted_key_cert",
    "soc_fw_key_cert": "soc_fw_key_cert",
    "soc_fw_content_cert": "soc_fw_cert",
    "tos_fw_key_cert": "tos_fw_key_cert",
    "tos_fw_content_cert": "tos_fw_cert",
    "nt_fw_key_cert": "nt_fw_key_cert",
    "nt_fw_content_cert": "nt_fw_cert",
}
CERT_ENTRIES_BY_COT = {name: {c: _ENTRY_OF_CERT[c] for c in cot.cert_names} for name, cot in tbbr.CHAINS.items()}
CERT_ENTRIES = CERT_ENTRIES_BY_COT["stm32mp1"]
CERT_BY_ENTRY = {v: k for k, v in CERT_ENTRIES.items()}
# Every certificate entry of any chain: re-signing drops them all.
ALL_CERT_ENTRIES = frozenset(_ENTRY_OF_CERT.values())


def uuid_string(raw: bytes) -> str:
    h = raw.hex()
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


@dataclass(frozen=True)
class Entry:
    uuid: bytes
    data: bytes
    flags: int = 0

    @property
    def name(self) -> str:
        return NAME_BY_UUID.get(self.uuid, uuid_string(self.uuid))


@dataclass(frozen=True)
class Fip:
    entries: list[Entry]
    flags: int = 0  # ToC header flags; bits 32..47 are platform flags

    def by_name(self) -> dict[str, bytes]:
        return {e.name: e.data for e in self.entries}


def parse(data: bytes) -> Fip:
    """Parse a FIP; raise InputError naming the first structural problem."""
    if len(data) < TOC_HEADER.size + TOC_ENTRY.size:
        raise InputError(f"not a FIP: {len(data)} bytes is too short for a ToC")
    name, _serial, flags = TOC_HEADER.unpack_from(data, 0)
    if name != TOC_HEADER_NAME:
        raise InputError(f"not a FIP: ToC header name 0x{name:08x} (expected 0x{TOC_HEADER_NAME:08x})")
    entries = []
    seen = set()
    pos = TOC_HEADER.size
    while True:
        if pos + TOC_ENTRY.size > len(data):
            raise InputError("truncated FIP: the ToC has no terminating null entry")
        uuid, offset, size, eflags = TOC_ENTRY.unpack_from(data, pos)
        pos += TOC_ENTRY.size
        if uuid == NULL_UUID:
            break
        if offset + size > len(data):
            raise InputError(f"truncated FIP: entry {uuid_string(uuid)} ends at {offset + size}, file has {len(data)} bytes")
        if offset < pos:
            raise InputError(f"bad FIP: entry {uuid_string(uuid)} overlaps the ToC")
        if uuid in seen:
            raise InputError(f"bad FIP: entry {uuid_string(uuid)} appears twice")
        seen.add(uuid)
        entries.append(Entry(uuid, bytes(data[offset : offset + size]), eflags))
    return Fip(entries, flags)


def fiptool_path() -> str:
    path = shutil.which("fiptool")
    if path is None:
        raise SegwayError("fiptool not found (install Debian's arm-trusted-firmware-tools)")
    return path


def pack(fip: Fip, *, align: int = 1) -> bytes:
    """Pack entries with TF-A's fiptool; every entry is passed by UUID (``--blob``)."""
    if align < 1 or align & (align - 1):
        raise UsageError(f"FIP alignment {align} is not a power of two")
    tool = fiptool_path()
    with tempfile.TemporaryDirectory(prefix="segway-fip-") as tmp:
        args = [tool, "create", "--align", str(align)]
        plat_flags = (fip.flags >> 32) & 0xFFFF
        if plat_flags:
            args += ["--plat-toc-flags", f"0x{plat_flags:x}"]
        for i, entry in enumerate(fip.entries):
            path = Path(tmp, f"{i}.bin")
            path.write_bytes(entry.data)
            args += ["--blob", f"uuid={uuid_string(entry.uuid)},file={path}"]
        out = Path(tmp, "fip.bin")
        args.append(str(out))
        result = subprocess.run(args, capture_output=True, text=True)
        if result.returncode != 0:
            detail = (result.stderr or result.stdout).strip().splitlines()
            raise SegwayError(f"fiptool create failed: {detail[-1] if detail else result.returncode}")
        return out.read_bytes()


def images_of(fip: Fip, cot: str = "stm32mp1") -> dict[str, bytes]:
    """The images the chain of trust hashes, by name."""
    present = fip.by_name()
    return {name: present[name] for name in tbbr.chain(cot).image_names if name in present}


def sign(fip_data: bytes, rot_key, **options) -> tuple[bytes, dict[str, bytes]]:
    """Add (or replace) the TBBR certificates in a FIP; return (FIP, certificates). ``options`` as
    for sign_fip."""
    fip = parse(fip_data)
    kept = [e for e in fip.entries if e.name not in ALL_CERT_ENTRIES]
    return sign_fip(Fip(kept, fip.flags), rot_key, **options)


def sign_images(images: dict[str, bytes], rot_key, **options) -> tuple[bytes, dict[str, bytes]]:
    """Build a signed FIP from separate images (names as in ``UUIDS``, e.g. tos_fw, nt_fw); ``options``
    as for sign_fip."""
    unknown = [n for n in images if n not in UUID_BYTES or n in ALL_CERT_ENTRIES]
    if unknown:
        raise UsageError(f"unknown FIP image name(s): {', '.join(unknown)}")
    return sign_fip(Fip([Entry(UUID_BYTES[name], data) for name, data in images.items()]), rot_key, **options)


def sign_fip(
    fip: Fip,
    rot_key,
    *,
    cot: str = "stm32mp1",
    keys: dict | None = None,
    tfw_nvctr: int = 0,
    ntfw_nvctr: int = 0,
    align: int = 1,
) -> tuple[bytes, dict[str, bytes]]:
    """Sign the entries of ``fip`` (none of them a certificate) with the TBBR chain ``cot``, pack
    them with the certificates and check the result; return (FIP, certificates).

    ``keys``: the chain's keys other than the ROT key, by role (``tbbr.KEY_OPTIONS``); the
    generic chain needs all five, STM32MP1's makes its own."""
    chain = tbbr.chain(cot)
    all_keys = {"rot": rot_key, **(keys or {})}
    certs = tbbr.build_chain(chain, images_of(fip, cot), all_keys, tfw_nvctr=tfw_nvctr, ntfw_nvctr=ntfw_nvctr)
    entry_of = CERT_ENTRIES_BY_COT[cot]
    entries = list(fip.entries) + [Entry(UUID_BYTES[entry_of[n]], der) for n, der in certs.items()]
    packed = pack(Fip(entries, fip.flags), align=align)
    # Read back what fiptool wrote and check it against the key before anyone writes it out.
    verify(packed, cot=cot, rot_public_key=rot_key.public_key())
    return packed, certs


def certificates_of(fip: Fip, cot: str = "stm32mp1") -> dict[str, bytes]:
    present = fip.by_name()
    return {cert: present[entry] for cert, entry in CERT_ENTRIES_BY_COT[tbbr.chain(cot).name].items()
            if entry in present}


def verify(fip_data: bytes, *, cot: str = "stm32mp1", rot_public_key=None, rot_pkh: bytes | None = None) -> dict:
    """Verify the chain of trust ``cot`` in a FIP; return a report (see tbbr.verify_chain).

    ``rot_pkh``: the STM32MP15 PKH (stm32mp1) or TF-A's ROTPK hash (generic)."""
    chain = tbbr.chain(cot)
    fip = parse(fip_data)
    report = tbbr.verify_chain(chain, certificates_of(fip, cot), images_of(fip, cot), rot_public_key=rot_public_key,
                               rot_pkh=rot_pkh)
    report["cot"] = chain.name
    report["entries"] = [{"name": e.name, "size": len(e.data)} for e in fip.entries]
    # Entries no certificate covers: TF-A's chain of trust will not load them.
    covered = set(chain.image_names) | set(CERT_ENTRIES_BY_COT[cot].values())
    report["unauthenticated"] = [e.name for e in fip.entries if e.name not in covered]
    return report
