"""Seeded mutations of a valid input.

The same seed, input and count give the same cases on every machine and in every run, so a failure
found in CI is found again locally with the same command. Nothing here knows a format: each format
passes the positions of its length fields (``Field``), the ranges worth hitting more often than the
payload (``hot``, e.g. headers and metadata rather than the kernel's bytes), and whether the input is
text (plans, manifests, env files), which adds line-level and number mutations.
"""

from __future__ import annotations

import random
import re
import zlib
from dataclasses import dataclass
from typing import Iterator, Sequence

# The fixed seed of the suite's run; SEGWAY_FUZZ_SEED picks another set of cases (test_fuzz.py).
SEED = 0x5E6A7

Range = tuple[int, int]  # [start, end) in bytes
PRELUDE_FIELDS = 16  # length fields set to their maximum in the prelude (the others: by random draws)


@dataclass(frozen=True)
class Field:
    """A length, size, offset or count the format stores at ``offset``: ``width`` bytes, ``order``
    "big" or "little"; ``der`` for a DER length (its octets are replaced by a long-form length)."""

    offset: int
    width: int = 4
    order: str = "big"
    name: str = ""
    der: bool = False


@dataclass(frozen=True)
class Mutation:
    kind: str
    detail: str
    data: bytes

    def describe(self) -> str:
        return f"{self.kind} ({self.detail})" if self.detail else self.kind


def seed_for(name: str, seed: int = SEED) -> int:
    """Each target draws from its own stream, so adding a target never changes another's cases."""
    return zlib.crc32(name.encode()) ^ seed


# Values written into length fields: all ones, sign bits, one past the input, zero and friends.
def _huge_values(width: int, size: int, current: int) -> list[int]:
    top = (1 << (8 * width)) - 1
    values = [top, top >> 1, 1 << (8 * width - 1), (top >> 1) + 2, size + 1, size * 2, 0, 1,
              current + 1, current - 1, current * 2, current + 0x1000, top - current]
    return [v & top for v in values]


_TEXT_INSERTS = ["\n", ":", ": ", "-", "- ", "{", "}", "[", "]", '"', "'", "&a", "*a", "!!python/object:os.system",
                 "%", "\0", "#", " ", "\t", "=", "$", "`", "\\", ",", "~", "null", "\r", "\u2028", "\ufeff",
                 "$(touch PWNED)", ";reboot", " 1 ignore_corruption", "<<: *a", "!!binary", "..", "../"]
_NUMBERS = ["99999999999999999999999999", "-1", "0", "4294967296", "18446744073709551616", "1e400", "0x7fffffff",
            "-0", "nan", ".inf", "2147483648", "00000000000000000001", "1_000"]
_DIGITS = re.compile(rb"\d+")


class Mutator:
    """Cases for one input: a fixed prelude (empty file, random bytes, truncations, each length
    field set to its maximum…) followed by random draws from ``seed``."""

    def __init__(self, original: bytes, seed: int, fields: Sequence[Field] = (), hot: Sequence[Range] = (),
                 text: str | None = None):
        if not original:
            raise ValueError("a mutator needs a non-empty valid input")
        self.original = bytes(original)
        self.rng = random.Random(seed)
        self.fields = [f for f in fields if f.offset + f.width <= len(original)]
        self.hot = [(a, min(b, len(original))) for a, b in hot if a < min(b, len(original))]
        self.text = text

    # -- positions ------------------------------------------------------------------------------

    def _offset(self) -> int:
        """A byte position: mostly inside the hot ranges when there are any."""
        if self.hot and self.rng.random() < 0.7:
            weights = [b - a for a, b in self.hot]
            a, b = self.rng.choices(self.hot, weights=[max(1, w) ** 0.5 for w in weights])[0]
            return self.rng.randrange(a, b)
        return self.rng.randrange(len(self.original))

    # -- the cases ------------------------------------------------------------------------------

    def prelude(self) -> list[Mutation]:
        data, n = self.original, len(self.original)
        rnd = random.Random(self.rng.random())
        out = [
            Mutation("empty", "0 bytes", b""),
            Mutation("random", f"{n} random bytes", rnd.randbytes(n)),
            Mutation("random", "64 random bytes", rnd.randbytes(64)),
            Mutation("truncate", f"to {n // 2} of {n} bytes", data[: n // 2]),
            Mutation("truncate", "last byte removed", data[:-1]),
            Mutation("truncate", "to 1 byte", data[:1]),
            Mutation("extend", "1 zero byte appended", data + b"\0"),
            Mutation("extend", "4096 random bytes appended", data + rnd.randbytes(4096)),
            Mutation("shift", "1 zero byte inserted at 0", b"\0" + data),
        ]
        for f in self.fields[:PRELUDE_FIELDS]:  # formats list the ones that matter most first
            out.append(self._field(f, (1 << (8 * f.width)) - 1 if not f.der else 0xFFFFFFFF))
        if self.text in ("yaml", "json"):
            out.append(self._deep_nesting())
        if self.text:
            out.append(Mutation("encoding", "invalid UTF-8 byte 0xff appended", data + b"\xff"))
        return out

    def cases(self, count: int) -> Iterator[Mutation]:
        """``count`` mutations, each different from the original."""
        made = 0
        for m in self.prelude():
            if made == count:
                return
            if m.data != self.original:
                made += 1
                yield m
        kinds = self._kinds()
        names, weights = zip(*kinds)
        while made < count:
            kind = self.rng.choices(names, weights=weights)[0]
            m = getattr(self, "_" + kind.replace("-", "_"))()
            if m.data != self.original:
                made += 1
                yield m

    def _kinds(self) -> list[tuple[str, int]]:
        kinds = [("bit-flip", 30), ("byte", 20), ("truncate", 6), ("extend", 4), ("shift", 6), ("random", 1)]
        if self.fields:
            kinds.append(("huge-length", 20))
        if self.text:
            kinds += [("text-insert", 18), ("text-delete", 8), ("text-line", 8), ("huge-number", 12)]
        return kinds

    # -- the operators --------------------------------------------------------------------------

    def _bit_flip(self) -> Mutation:
        data = bytearray(self.original)
        flips = []
        for _ in range(self.rng.choice((1, 1, 1, 2, 3, 8))):
            off, bit = self._offset(), self.rng.randrange(8)
            data[off] ^= 1 << bit
            flips.append(f"0x{off:x}.{bit}")
        return Mutation("bit-flip", " ".join(flips), bytes(data))

    def _byte(self) -> Mutation:
        data = bytearray(self.original)
        changes = []
        for _ in range(self.rng.choice((1, 1, 2, 4, 8))):
            off = self._offset()
            value = self.rng.choice((0x00, 0xFF, 0x7F, 0x80, 0x01, self.rng.randrange(256)))
            data[off] = value
            changes.append(f"0x{off:x}=0x{value:02x}")
        return Mutation("byte", " ".join(changes), bytes(data))

    def _truncate(self) -> Mutation:
        n = len(self.original)
        cut = self.rng.choice((self._offset(), self._offset(), n - self.rng.randrange(1, min(n, 64) + 1)))
        return Mutation("truncate", f"to {cut} of {n} bytes", self.original[:cut])

    def _extend(self) -> Mutation:
        size = self.rng.choice((1, 3, 4, 512, 4096, 65536))
        fill = self.rng.choice(("zero", "random", "copy"))
        extra = {"zero": bytes(size), "random": self.rng.randbytes(size)}.get(fill) or \
            (self.original * (size // len(self.original) + 1))[:size]
        return Mutation("extend", f"{size} {fill} bytes appended", self.original + extra)

    def _shift(self) -> Mutation:
        off, size = self._offset(), self.rng.choice((1, 1, 2, 4, 16))
        if self.rng.random() < 0.5:
            return Mutation("shift", f"{size} bytes inserted at 0x{off:x}",
                            self.original[:off] + self.rng.randbytes(size) + self.original[off:])
        return Mutation("shift", f"{size} bytes deleted at 0x{off:x}", self.original[:off] + self.original[off + size:])

    def _random(self) -> Mutation:
        size = self.rng.choice((1, 16, 256, len(self.original)))
        return Mutation("random", f"{size} random bytes", self.rng.randbytes(size))

    def _field(self, f: Field, value: int) -> Mutation:
        data = self.original
        if f.der:
            # Long form with 4 length octets in place of the original length octets.
            old_len = 1 if data[f.offset] < 0x80 else 1 + (data[f.offset] & 0x7F)
            new = bytes([0x84]) + value.to_bytes(4, "big")
            return Mutation("huge-length", f"DER length at 0x{f.offset:x} = 0x{value:x}",
                            data[: f.offset] + new + data[f.offset + old_len:])
        raw = value.to_bytes(f.width, f.order)
        name = f" {f.name}" if f.name else ""
        return Mutation("huge-length", f"{name.strip() or 'field'} at 0x{f.offset:x} = 0x{value:x}",
                        data[: f.offset] + raw + data[f.offset + f.width:])

    def _huge_length(self) -> Mutation:
        f = self.rng.choice(self.fields)
        if f.der:
            value = self.rng.choice((0xFFFFFFFF, 0x7FFFFFFF, len(self.original) + 1, 0))
            return self._field(f, value)
        current = int.from_bytes(self.original[f.offset: f.offset + f.width], f.order)
        return self._field(f, self.rng.choice(_huge_values(f.width, len(self.original), current)))

    # -- text operators --------------------------------------------------------------------------

    def _text_insert(self) -> Mutation:
        off = self._offset()
        what = self.rng.choice(_TEXT_INSERTS).encode()
        return Mutation("text-insert", f"{what!r} at {off}", self.original[:off] + what + self.original[off:])

    def _text_delete(self) -> Mutation:
        off, size = self._offset(), self.rng.choice((1, 1, 2, 5))
        return Mutation("text-delete", f"{size} chars at {off}", self.original[:off] + self.original[off + size:])

    def _text_line(self) -> Mutation:
        lines = self.original.split(b"\n")
        i, j = self.rng.randrange(len(lines)), self.rng.randrange(len(lines))
        op = self.rng.choice(("delete", "duplicate", "swap", "indent", "dedent"))
        if op == "delete":
            del lines[i]
        elif op == "duplicate":
            lines.insert(j, lines[i])
        elif op == "swap":
            lines[i], lines[j] = lines[j], lines[i]
        elif op == "indent":
            lines[i] = b"  " + lines[i]
        else:
            lines[i] = lines[i].lstrip()
        return Mutation("text-line", f"{op} line {i + 1}" + (f"/{j + 1}" if op in ("duplicate", "swap") else ""),
                        b"\n".join(lines))

    def _huge_number(self) -> Mutation:
        runs = list(_DIGITS.finditer(self.original))
        if not runs:
            return self._text_insert()
        m = self.rng.choice(runs)
        value = self.rng.choice(_NUMBERS).encode()
        return Mutation("huge-number", f"{m.group().decode()} at {m.start()} -> {value.decode()}",
                        self.original[: m.start()] + value + self.original[m.end():])

    def _deep_nesting(self) -> Mutation:
        depth = 100_000
        if self.text == "json":
            nest = b"[" * depth + b"]" * depth
            data = self.original.rstrip()
            if data.endswith(b"}"):
                return Mutation("deep-nesting", f"{depth} nested arrays", data[:-1] + b', "x": ' + nest + b"}")
            return Mutation("deep-nesting", f"{depth} nested arrays", nest)
        return Mutation("deep-nesting", f"{depth} nested flow sequences",
                        self.original.rstrip(b"\n") + b"\nx: " + b"[" * depth + b"]" * depth + b"\n")


def der_length_fields(data: bytes, base: int = 0, limit: int = 4000) -> list[Field]:
    """Positions of the length octets of every DER element in ``data`` (walked recursively through
    constructed elements and through OCTET/BIT STRINGs that hold DER), at most ``limit``."""
    out: list[Field] = []

    def walk(start: int, end: int, depth: int) -> None:
        pos = start
        while pos < end and len(out) < limit and depth < 40:
            if pos + 2 > end:
                return
            tag = data[pos]
            if tag & 0x1F == 0x1F:
                return  # high tag numbers do not occur in what we sign
            lpos = pos + 1
            first = data[lpos]
            if first < 0x80:
                length, hdr = first, 2
            else:
                k = first & 0x7F
                if k == 0 or k > 4 or lpos + 1 + k > end:
                    return
                length, hdr = int.from_bytes(data[lpos + 1: lpos + 1 + k], "big"), 2 + k
            body, stop = pos + hdr, pos + hdr + length
            if stop > end:
                return
            out.append(Field(base + lpos, width=hdr - 1, der=True, name=f"DER tag 0x{tag:02x} length"))
            if tag & 0x20:
                walk(body, stop, depth + 1)
            elif tag in (0x04, 0x03) and length > 2:
                inner = body + (1 if tag == 0x03 else 0)
                if data[inner] in (0x30, 0x31) and _der_fits(data, inner, stop):
                    walk(inner, stop, depth + 1)
            pos = stop

    walk(0, len(data), 0)
    return out


def _der_fits(data: bytes, pos: int, end: int) -> bool:
    first = data[pos + 1] if pos + 1 < end else 0xFF
    if first < 0x80:
        return pos + 2 + first == end
    k = first & 0x7F
    if k == 0 or k > 4 or pos + 2 + k > end:
        return False
    return pos + 2 + k + int.from_bytes(data[pos + 2: pos + 2 + k], "big") == end
