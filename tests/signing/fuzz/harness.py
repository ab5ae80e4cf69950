"""Running one fuzz case and judging it.

Most cases run the CLI's own entry point (``segway_sign.cli.main:main``, with its error handling) in
this process, inside click's ``CliRunner`` isolation: no interpreter start-up per case. A share runs
the installed ``segway-sign`` as a user does, in a subprocess with a timeout and a memory limit; the
non-regular inputs (FIFO, character device, directory) only ever go there, since a reader that
blocks on them could not be stopped in-process.

Every case must end in one of two ways:
- rejected: non-zero exit, and stderr is one line ``segway-sign: error: …`` (or click's usage
  error, exit 2), no traceback;
- accepted: exit 0, and the mutated input equals the valid one on every byte its format declares
  the device reads (fuzz_targets.base.Input.device).
A traceback, a hang (past the per-case timeout), anything else on a failed run, or an accepted
input that differs from the signed one in a device byte is a failure.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path

from click.testing import CliRunner

from tests.helpers import SEGWAY_SIGN
from tests.signing.fuzz.fuzz_targets.base import DeviceView
from tests.signing.fuzz.mutator import Mutation

# Seconds before a case counts as a hang: a case takes milliseconds in-process, a second through
# the CLI on a loaded CI machine.
IN_PROCESS_TIMEOUT = float(os.environ.get("SEGWAY_FUZZ_TIMEOUT", "20"))
SUBPROCESS_TIMEOUT = 1.5 * IN_PROCESS_TIMEOUT
MEMORY_LIMIT = 3 << 30  # bytes of address space for a subprocess case: a huge length must not OOM CI


class Hang(BaseException):
    """Raised by the per-case alarm (a BaseException, so no ``except Exception`` swallows it)."""


@dataclass
class Outcome:
    code: int | None
    stdout: str
    stderr: str
    seconds: float
    traceback: str | None = None
    hung: bool = False


def _alarm(signum, frame):
    raise Hang()


def in_process(argv: list[str], env: dict[str, str], timeout: float = IN_PROCESS_TIMEOUT,
               fresh_token: bool = False) -> Outcome:
    """The CLI's entry point in this process (SIGALRM bounds the time). ``fresh_token``: start with
    no PKCS#11 session, as a new process does (else an earlier case's login would stand in for a
    PIN file under test)."""
    from segway_sign.cli.main import main
    from segway_sign.hsm import module
    if fresh_token:
        module.reset()
    runner = CliRunner()
    start = time.monotonic()
    code, tb, hung = 0, None, False
    old_argv, old_handler = sys.argv, signal.signal(signal.SIGALRM, _alarm)
    with runner.isolation(env=env) as (out, err, _):
        sys.argv = ["segway-sign", *argv]
        signal.setitimer(signal.ITIMER_REAL, timeout)
        try:
            main()
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
        except Hang:
            code, hung = None, True
        except BaseException:  # noqa: BLE001 - an escaped exception is exactly what is looked for
            code, tb = 1, traceback.format_exc()
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, old_handler)
            sys.argv = old_argv
        stdout = out.getvalue().decode(errors="replace")
        stderr = err.getvalue().decode(errors="replace")
    return Outcome(code, stdout, stderr, time.monotonic() - start, tb, hung)


def in_subprocess(argv: list[str], env: dict[str, str], timeout: float = SUBPROCESS_TIMEOUT) -> Outcome:
    """The installed ``segway-sign``, as a user runs it; ``env`` is its whole environment."""
    start = time.monotonic()
    # ulimit through a shell, not preexec_fn: cases run from a worker thread.
    limit = ["/bin/sh", "-c", f'ulimit -v {MEMORY_LIMIT >> 10} && exec "$0" "$@"']
    proc = subprocess.Popen([*limit, SEGWAY_SIGN, *argv], env=env, stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
    try:
        out, err = proc.communicate(timeout=timeout)
        hung = False
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        hung = True
    stderr = err.decode(errors="replace")
    tb = stderr if "Traceback (most recent call last)" in stderr else None
    return Outcome(None if hung else proc.returncode, out.decode(errors="replace"), stderr,
                   time.monotonic() - start, tb, hung)


# ------------------------------------------------------------------------------------------------
# Cases


@dataclass
class Case:
    index: int
    input: object  # fuzz_targets.base.Input
    mutation: Mutation | None  # None: a special case (``special`` says which)
    subprocess: bool
    special: str | None = None  # "fifo", "device", "directory", "missing"

    def describe(self) -> str:
        what = self.mutation.describe() if self.mutation else self.special
        return f"{self.input.path}: {what}"


def link_tree(src: Path, dst: Path) -> None:
    """A case directory: hard links to the valid inputs (nothing under test writes to its inputs;
    that the valid files are unchanged at the end is checked)."""
    shutil.copytree(src, dst, copy_function=os.link)


def prepare(case: Case, template: Path, where: Path) -> Path:
    link_tree(template, where)
    path = where / case.input.path
    mode = path.stat().st_mode & 0o777
    path.unlink()
    if case.mutation is not None:
        path.write_bytes(case.mutation.data)
        path.chmod(mode)  # a PIN file stays 0600: its warning is not what is tested
    elif case.special == "fifo":
        os.mkfifo(path)
    elif case.special == "device":
        path.symlink_to("/dev/zero")
    elif case.special == "directory":
        path.mkdir()
    return where


@dataclass
class Verdict:
    status: str  # "rejected", "accepted", "accepted-outside", "failure"
    problem: str = ""


def _one_line(outcome: Outcome) -> bool:
    err = outcome.stderr.strip()
    if not err:
        return False
    if outcome.code == 2 and err.startswith("Usage:") and err.splitlines()[-1].startswith("Error:"):
        return True  # click's own usage errors: Usage + hint + one Error line
    return len(err.splitlines()) == 1 and err.startswith("segway-sign: error: ")


def _traceback_summary(tb: str) -> str:
    lines = [line for line in tb.strip().splitlines() if line.strip()]
    frames = [line.strip() for line in lines if line.strip().startswith('File "')]
    where = ""
    for frame in reversed(frames):
        if "segway_sign" in frame:
            parts = frame.split('"')
            path, line = parts[1], frame.split("line ")[1].split(",")[0]
            where = f" at {path.split('segway_sign/')[-1]}:{line}"
            break
    return f"traceback: {lines[-1][:160]}{where}"


def changed_device_bytes(device: list[tuple[int, int]], original: bytes, mutated: bytes) -> list[tuple[int, int]]:
    """The device ranges (clipped to the changes) where ``mutated`` differs from ``original``."""
    out = []
    for a, b in device:
        if mutated[a:b] == original[a:b]:
            continue
        i = next(i for i in range(a, b) if i >= len(mutated) or mutated[i] != original[i])
        j = next(j for j in range(b, i, -1) if j - 1 >= len(mutated) or mutated[j - 1] != original[j - 1])
        out.append((i, j))
    return out


def judge(case: Case, original: bytes, outcome: Outcome) -> Verdict:
    if outcome.hung:
        return Verdict("failure", "hang")
    if outcome.traceback or "Traceback (most recent call last)" in outcome.stderr:
        return Verdict("failure", _traceback_summary(outcome.traceback or outcome.stderr))
    if outcome.code != 0:
        if not _one_line(outcome):
            return Verdict("failure", f"exit {outcome.code}, error not one line: {outcome.stderr.strip()[:300]!r}")
        return Verdict("rejected")
    if case.mutation is None:
        return Verdict("failure", f"accepted a {case.special} as {case.input.path}")
    if case.input.device is None:
        return Verdict("accepted")
    mutated = case.mutation.data
    if isinstance(case.input.device, DeviceView):
        want = case.input.device.read(original)
        try:
            got = case.input.device.read(mutated)
        except Exception as err:  # noqa: BLE001 - the device could not read it as it reads the valid one
            return Verdict("failure", f"accepted, but not readable as the device reads it ({type(err).__name__})")
        if got != want:
            diff = next((f"{w!r:.80} became {g!r:.80}" for w, g in zip(want, got) if w != g), "items added or lost")
            return Verdict("failure", f"accepted with what the device reads changed: {diff}")
        return Verdict("accepted-outside")
    if case.input.canonical is not None:
        original, mutated = case.input.canonical(original, original), case.input.canonical(original, mutated)
    changed = changed_device_bytes(case.input.device(original), original, mutated)
    if changed:
        where = ", ".join(f"0x{a:x}" + (f"-0x{b - 1:x}" if b - a > 1 else "") for a, b in changed[:4])
        return Verdict("failure", f"accepted with device bytes changed ({where})")
    return Verdict("accepted-outside")


def declaration_sees_change(inp, valid: bytes) -> bool:
    """Whether ``inp``'s device declaration notices one byte flipped in the middle of the largest
    range it declares (of the file, for a view)."""
    if isinstance(inp.device, DeviceView):
        pos = len(valid) // 2
    else:
        a, b = max(inp.device(valid), key=lambda r: r[1] - r[0])
        pos = (a + b) // 2
    flipped = valid[:pos] + bytes([valid[pos] ^ 0x01]) + valid[pos + 1:]
    case = Case(0, inp, Mutation("bit-flip", f"0x{pos:x}.0", flipped), False)
    return judge(case, valid, Outcome(0, "", "", 0.0)).status == "failure"


@dataclass
class Tally:
    cases: int = 0
    in_process: int = 0
    subprocess: int = 0
    rejected: int = 0
    accepted_outside: int = 0  # signed inputs: accepted, every change outside the device bytes
    accepted: int = 0  # inputs that are not signed artifacts (plans, PIN files, anchors)
    tracebacks: int = 0
    hangs: int = 0
    other: int = 0  # not one line, wrongly accepted
    failures: list[tuple[str, str, str]] = field(default_factory=list)  # (case, via, problem)
    outside: list[str] = field(default_factory=list)  # the accepted-outside cases, for the report
    accepted_cases: list[str] = field(default_factory=list)  # and the accepted ones

    def add(self, case: Case, verdict: Verdict) -> None:
        self.cases += 1
        if case.subprocess:
            self.subprocess += 1
        else:
            self.in_process += 1
        if verdict.status == "rejected":
            self.rejected += 1
        elif verdict.status == "accepted":
            self.accepted += 1
            self.accepted_cases.append(case.describe())
        elif verdict.status == "accepted-outside":
            self.accepted_outside += 1
            self.outside.append(case.describe())
        else:
            if verdict.problem.startswith("traceback"):
                self.tracebacks += 1
            elif verdict.problem == "hang":
                self.hangs += 1
            else:
                self.other += 1
            self.failures.append((case.describe(), "subprocess" if case.subprocess else "in-process",
                                  verdict.problem))

    def counts(self) -> dict[str, int]:
        return {k: v for k, v in self.__dict__.items() if not isinstance(v, list)}
