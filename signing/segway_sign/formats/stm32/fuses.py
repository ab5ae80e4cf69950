"""STM32MP public-key hash fuse values for the key ceremony.

Header v1 (STM32MP15x): OTP holds the PKH of one key. Header v2 (STM32MP13x, STM32MP2x): OTP holds
the PKHTH, the hash of a table of up to eight key hashes; images name the key they use by index.
"""

from __future__ import annotations

from ...errors import UsageError
from . import header as stm32


def pkh_fuse_words(public_keys, header_version: int) -> dict:
    """Fuse values for ``public_keys`` (cryptography EC P-256 public keys, table order).

    ``header_version`` is 1 (STM32MP15x: exactly one key) or 2 (STM32MP13x/MP2x: 1..8 keys).
    Returns a JSON-ready dict::

        {"header_version": 1|2, "kind": "PKH"|"PKHTH", "hash": "<64 hex>",
         "otp_first_word": 24, "otp_words": ["0x........", ... 8 values],
         "pk_hashes": ["<64 hex>", ...],          # v2 table entries (v1: the key's PKH)
         "public_keys": ["<128 hex X||Y>", ...]}

    ``hash`` as 32 raw bytes is the file U-Boot's ``stm32key fuse <addr>`` reads from memory;
    ``otp_words`` are the values STM32CubeProgrammer writes to OTP words 24..31.
    """
    keys = list(public_keys)
    if header_version == 1:
        if len(keys) != 1:
            raise UsageError(f"header v1 (STM32MP15x) fuses the hash of exactly one key, got {len(keys)}")
        digest = stm32.pkh_v1(keys[0])
        entries = [digest]
        kind = "PKH"
    elif header_version == 2:
        digest = stm32.pkhth(keys)
        entries = [stm32.pk_table_entry(k) for k in keys]
        kind = "PKHTH"
    else:
        raise UsageError(f"STM32 header version must be 1 or 2, got {header_version}")
    return {
        "header_version": header_version,
        "kind": kind,
        "hash": digest.hex(),
        "otp_first_word": stm32.OTP_PKH_FIRST_WORD,
        "otp_words": [f"0x{w:08x}" for w in stm32.otp_words(digest)],
        "pk_hashes": [e.hex() for e in entries],
        "public_keys": [stm32.public_key_xy(k)[1].hex() for k in keys],
    }
