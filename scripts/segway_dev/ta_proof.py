"""OP-TEE user TAs loaded through tee-supplicant on the signed QEMU device, several cases per boot.

The guest runs trixie's OP-TEE client (``tee-supplicant``, ``libteec2`` 4.5.0) and ``xtest``
against the OP-TEE OS the device built with the token's TA key. Each case is one file put at
``/lib/optee_armtz/<uuid>.ta`` for the same UUID, followed by the smallest xtest case that opens a
session to that TA: ``regression 1004`` ("Test User Crypt TA", xtest's crypt TA, nothing else).
The init script swaps the file between xtest runs and prints, per case, xtest's output and its exit
status on UART0; OP-TEE prints why it refused a TA on UART1 (its loader, ``ldelf``, names the call
that failed, the core the result), in the order the cases ran: the n-th refusal on UART1 is the
n-th refused case.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Mapping, Sequence

from . import bootmedia, guest_packages

CRYPT_TA_UUID = "cb3e5ba0-adf1-11e0-998b-0002a5d5c51b"  # xtest's crypt TA (ta/crypt)
XTEST_CASE = ("regression", "1004")  # opens a session to the crypt TA and uses it (SHA-256, AES)
GUEST_BINARIES = ("usr/sbin/tee-supplicant", "usr/bin/xtest")
TA_DIR = "lib/optee_armtz"  # tee-supplicant's TA path in Debian's build (/lib + optee_armtz)
CASE_DIR = "segway-ta"
TEE_ERROR_SECURITY = 0xFFFF000F

_RESULT = re.compile(r"^SEGWAY-TA-RESULT (\S+) rc=(\d+)\s*$", re.M)
_LOG = re.compile(r"^SEGWAY-TA-LOG (\S+): (.*)$", re.M)
# What OP-TEE prints on UART1 when it refuses a user TA: ldelf names the call that failed
# ("E/LD:  init_elf:494 sys_open_ta_bin(<uuid>)" when the header or its signature is refused,
# "E/LD:  copy_section_headers:1136 sys_copy_from_ta_bin" when the payload's hash is), then the core
# "E/TC:? 0 ldelf_init_with_ldelf:152 ldelf failed with res: 0xffff000f".
_LDELF_ERROR = re.compile(r"^E/LD:\s.*$")
_CORE_REFUSAL = re.compile(r"^E/TC:.*ldelf failed with res: (0x[0-9a-f]+)\s*$")


def init_script(cases: Sequence[str], uuid: str = CRYPT_TA_UUID) -> str:
    """/init: :func:`init_body`, then the userspace marker once every case ran."""
    return bootmedia.init_script(init_body(cases, uuid) + f"echo {bootmedia.USERSPACE_MARKER}\n")


def init_body(cases: Sequence[str], uuid: str = CRYPT_TA_UUID) -> str:
    """Shell for /init: OP-TEE's driver, tee-supplicant (its secure storage in a tmpfs), then per
    case the TA file swapped in and xtest's case run."""
    if not cases or any(not re.fullmatch(r"[a-z0-9-]+", c) for c in cases):
        raise ValueError(f"case names must be lower-case words: {cases!r}")
    suite, number = XTEST_CASE
    body = f"""modprobe tee && modprobe optee
for i in 1 2 3 4 5 6 7 8 9 10; do test -c /dev/tee0 && break; sleep 1; done
test -c /dev/tee0 || echo "SEGWAY-TA-ERROR no /dev/tee0"
mkdir -p /var/lib/optee-client /{TA_DIR} /tmp
mount -t tmpfs tmpfs /var/lib/optee-client
tee-supplicant -d || echo "SEGWAY-TA-ERROR tee-supplicant did not start"
for case in {' '.join(cases)}; do
  cp /{CASE_DIR}/$case.ta /{TA_DIR}/{uuid}.ta
  xtest -t {suite} {number} >/tmp/xtest.log 2>&1
  rc=$?
  sed "s/^/SEGWAY-TA-LOG $case: /" /tmp/xtest.log
  echo "SEGWAY-TA-RESULT $case rc=$rc"
  rm -f /{TA_DIR}/{uuid}.ta
done
"""
    return body


def initramfs_files(tas: Mapping[str, bytes], guest: guest_packages.GuestRoot | None = None) -> dict:
    """The guest's client binaries and libraries, and each case's TA at /segway-ta/<case>.ta."""
    guest = guest or guest_packages.fetch(guest_packages.OPTEE_CLIENT)
    files: dict = dict(guest_packages.initramfs_files(guest, GUEST_BINARIES))
    for case, data in tas.items():
        files[f"{CASE_DIR}/{case}.ta"] = bytes(data)
    return files


@dataclasses.dataclass(frozen=True)
class CaseRun:
    case: str
    rc: int  # xtest's exit status
    log: list  # xtest's lines

    @property
    def passed(self) -> bool:
        suite, number = XTEST_CASE
        return self.rc == 0 and f"{suite}_{number} OK" in (line.strip() for line in self.log)

    @property
    def security_error(self) -> bool:
        """The client saw TEE_ERROR_SECURITY from TEEC_OpenSession."""
        return any(f"{TEE_ERROR_SECURITY:#x}" in line.lower() for line in self.log)


def case_runs(uart0: str) -> dict[str, CaseRun]:
    logs: dict[str, list] = {}
    for m in _LOG.finditer(uart0):
        logs.setdefault(m.group(1), []).append(m.group(2).rstrip())
    return {m.group(1): CaseRun(m.group(1), int(m.group(2)), logs.get(m.group(1), []))
            for m in _RESULT.finditer(uart0)}


@dataclasses.dataclass(frozen=True)
class Refusal:
    ldelf: list  # ldelf's error lines before the core's
    core: str  # the core's line
    res: int  # the TEE_Result it names

    @property
    def lines(self) -> list:
        return [*self.ldelf, self.core]


def optee_refusals(uart1: str) -> list[Refusal]:
    """OP-TEE's refusals of user TAs, in the order it printed them."""
    found, pending = [], []
    for line in uart1.splitlines():
        line = line.rstrip()
        if _LDELF_ERROR.match(line):
            pending.append(line)
        elif m := _CORE_REFUSAL.match(line):
            found.append(Refusal(pending, line, int(m.group(1), 16)))
            pending = []
    return found
