"""Fuzzing every command that parses an input: a fixed-seed set of mutations of valid inputs signed
by a real SoftHSM token. No traceback, no hang, a one-line error for every rejected input, and no
accepted input that differs from the signed one in a byte the device reads (see docs/fuzzing.md).

SEGWAY_FUZZ_CASES sets the cases per target (default 250: the suite's run); the run before a
release takes 20000. SEGWAY_FUZZ_SEED draws another set; SEGWAY_FUZZ_REPORT=FILE appends each
target's counts as a JSON line.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Iterator

import pytest

from tests.helpers import SoftHsmToken, forget_active_token
from tests.signing.fuzz import harness, mutator
from tests.signing.fuzz.fuzz_targets import TARGETS
from tests.signing.fuzz.fuzz_targets.base import Shop

CASES = int(os.environ.get("SEGWAY_FUZZ_CASES", "250"))
# pytest.ini's 900 s per test holds the suite's run; a long run gets about 0.1 s per case more.
pytestmark = [pytest.mark.slow, pytest.mark.timeout(max(900, round(CASES * 0.1) + 900))]
SEED = int(os.environ.get("SEGWAY_FUZZ_SEED", str(mutator.SEED)), 0)
# One case in SUBPROCESS_EVERY runs through the real CLI, up to SUBPROCESS_MAX per target.
SUBPROCESS_EVERY = 15
SUBPROCESS_MAX = int(os.environ.get("SEGWAY_FUZZ_SUBPROCESS_MAX", "400"))
REPORT = os.environ.get("SEGWAY_FUZZ_REPORT")


@pytest.fixture(scope="module")
def shop(tmp_path_factory):
    root = tmp_path_factory.mktemp("fuzz")
    (root / "token").mkdir()
    return Shop(root, SoftHsmToken(root / "token", label="fuzz"))


def plan_cases(target, originals: dict[str, bytes], count: int) -> Iterator[harness.Case]:
    """``count`` mutations shared among the target's inputs by weight, every SUBPROCESS_EVERY-th
    through the real CLI, then what else may stand in for each file: a FIFO or a character device
    (through the real CLI only: a reader blocked on them cannot be stopped in-process), a directory,
    nothing. Made one at a time: a long run never holds its inputs' copies."""
    total = sum(i.weight for i in target.inputs)
    index, through_cli = 0, 0
    for inp in target.inputs:
        n = max(1, round(count * inp.weight / total))
        m = mutator.Mutator(originals[inp.path], mutator.seed_for(f"{target.name}:{inp.path}", SEED),
                            inp.fields(originals[inp.path]), inp.hot(originals[inp.path]), inp.text)
        for mut in m.cases(n):
            via_cli = index % SUBPROCESS_EVERY == SUBPROCESS_EVERY - 1 and through_cli < SUBPROCESS_MAX
            through_cli += via_cli
            yield harness.Case(index, inp, mut, via_cli)
            index += 1
    for inp in target.inputs:
        for special in inp.specials:
            yield harness.Case(index, inp, None, special in ("fifo", "device"), special)
            index += 1


def _digest_tree(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("target", TARGETS, ids=lambda t: t.name.replace(" ", "-"))
def test_fuzz(shop, target, tmp_path):
    started = time.monotonic()
    template = tmp_path / "valid"
    template.mkdir()
    target.build(shop, template)
    if target.token:  # in-process signing: this process's PKCS#11 layer, (re)started on the token
        forget_active_token()
        shop.token.activate()
    built = time.monotonic()
    valid = _digest_tree(template)
    originals = {inp.path: (template / inp.path).read_bytes() for inp in target.inputs}

    # Each declaration sees a change in what it declares (a byte flipped in the middle of it).
    for inp in target.inputs:
        if inp.device is not None:
            assert harness.declaration_sees_change(inp, originals[inp.path]), (target.name, inp.path)

    # The valid inputs themselves are accepted, in-process and through the CLI.
    def in_process(argv, env):
        return harness.in_process(argv, env, fresh_token=target.token)

    envs = {in_process: shop.env(), harness.in_subprocess: dict(os.environ, **shop.env())}
    for run, env in envs.items():
        where = tmp_path / f"check-{run.__name__}"
        harness.link_tree(template, where)
        outcome = run(target.argv(shop, where), env)
        assert outcome.code == 0 and not outcome.traceback, (target.name, outcome.stderr)
        shutil.rmtree(where)

    tally = harness.Tally()
    work = tmp_path / "cases"
    work.mkdir()

    def run_case(case: harness.Case) -> tuple[harness.Case, harness.Verdict]:
        where = harness.prepare(case, template, work / str(case.index))
        run = harness.in_subprocess if case.subprocess else in_process
        outcome = run(target.argv(shop, where), envs[run])
        verdict = harness.judge(case, originals[case.input.path], outcome)
        shutil.rmtree(where)
        if case.mutation is not None:  # the description stays, the bytes go
            case.mutation = dataclasses.replace(case.mutation, data=b"")
        return case, verdict

    # The real-CLI cases run on worker threads while this thread runs the in-process ones.
    with ThreadPoolExecutor(max_workers=2) as pool:
        futures = []
        for case in plan_cases(target, originals, max(1, round(CASES * target.share))):
            if case.subprocess:
                futures.append(pool.submit(run_case, case))
            else:
                tally.add(*run_case(case))
        in_process_done = time.monotonic()
        for future in futures:
            tally.add(*future.result())

    assert _digest_tree(template) == valid, "a command modified its input"
    seconds = time.monotonic() - started
    counts = tally.counts()
    print(f"\n{target.name}: {json.dumps(counts)} in {seconds:.1f} s (build {built - started:.1f} s, "
          f"in-process cases {in_process_done - built:.1f} s)")
    for what in tally.outside[:10]:
        print(f"  accepted, outside the device bytes: {what}")
    if REPORT:
        with open(REPORT, "a") as f:
            f.write(json.dumps({"target": target.name, "seed": SEED, "seconds": round(seconds, 1), **counts,
                                "failures": tally.failures, "accepted_outside_cases": tally.outside,
                                "accepted_cases": tally.accepted_cases}) + "\n")
    if tally.failures:
        problems: dict[str, list[str]] = {}
        for what, via, problem in tally.failures:
            problems.setdefault(problem, []).append(f"{what} [{via}]")
        lines = [f"{len(tally.failures)} of {tally.cases} cases failed ({len(problems)} distinct problems):"]
        for problem, whats in sorted(problems.items(), key=lambda kv: -len(kv[1])):
            lines.append(f"- {problem}: {len(whats)} case(s), e.g. {'; '.join(whats[:3])}")
        pytest.fail("\n".join(lines), pytrace=False)
