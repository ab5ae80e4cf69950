"""Outputs are atomic and durable, inputs are never modified, and a killed signer leaves no
temporary behind: files are written unnamed (O_TMPFILE) and linked once complete; directories (and
files replacing an existing output) go through named temporaries the next run removes when their
writer is dead."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest

from tests.fit_fixtures import EPOCH, make_unsigned_fit
from tests.helpers import SEGWAY_SIGN, run_cli
from tests.signing.release.release_fixtures import make_deploy, plan_doc, token_certs, write_plan
from segway_sign import atomic

TEMP = re.compile(r"^\..*\.segway-[0-9a-f]{8}-[0-9a-f]{8}-(\d+)-(\d+)-[0-9a-f]{6}\.(tmp|old)$")


def _start_time(pid: int) -> str:
    stat = Path(f"/proc/{pid}/stat").read_bytes()
    return stat[stat.rfind(b")") + 2:].split()[19].decode()


def _open_in(pid: int, directory: Path) -> list[str]:
    """What the process has open inside ``directory`` (an unnamed file shows as '#<inode> (deleted)')."""
    found = []
    with os.scandir(f"/proc/{pid}/fd") as fds:
        for fd in fds:
            try:
                target = os.readlink(fd.path)
                size = os.stat(fd.path).st_size
            except OSError:
                continue
            if target.startswith(f"{directory}/") and size > 0:
                found.append(target)
    return found


def _start(args: list[str], tok) -> subprocess.Popen:
    env = tok.run_env()
    env["SOURCE_DATE_EPOCH"] = EPOCH
    return subprocess.Popen([SEGWAY_SIGN, *args], env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)


def _kill_when(proc: subprocess.Popen, ready, timeout: float = 300) -> None:
    """SIGKILL ``proc`` as soon as ``ready()`` holds (polled every millisecond); reap it."""
    deadline = time.monotonic() + timeout
    try:
        while not ready():
            assert proc.poll() is None, f"finished before it could be killed: {proc.stderr.read().decode()}"
            assert time.monotonic() < deadline, "never started writing"
            time.sleep(0.001)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        proc.stderr.close()
    assert proc.returncode == -signal.SIGKILL


@pytest.fixture(scope="module")
def big_fit(tmp_path_factory):
    """An unsigned FIT with a 200 MB kernel."""
    return make_unsigned_fit(tmp_path_factory.mktemp("bigfit"), kernel_size=200 << 20)


def _fit_sign(uri, tok, src: Path, out: Path, *extra: str) -> list[str]:
    return ["fit", "sign", "--key", uri, "--in", str(src), "--out", str(out), "--pin-file", str(tok.pin_file), *extra]


@pytest.mark.slow
def test_fit_sign_killed_while_writing_leaves_nothing(softhsm, tmp_path, big_fit):
    uri = softhsm.generate("rsa2048", "fit")
    before = big_fit.read_bytes()
    outdir = tmp_path / "out"
    outdir.mkdir()
    out = outdir / "o.itb"
    proc = _start(_fit_sign(uri, softhsm, big_fit, out), softhsm)
    seen: list[str] = []

    def writing() -> bool:
        seen[:] = _open_in(proc.pid, outdir)
        return bool(seen)
    _kill_when(proc, writing)
    assert all(target.endswith("(deleted)") and "/#" in target for target in seen), seen
    # Not even a hidden file: the unnamed file vanished with its writer.
    assert os.listdir(outdir) == []
    res = run_cli(_fit_sign(uri, softhsm, big_fit, out), softhsm, env={"SOURCE_DATE_EPOCH": EPOCH})
    assert res.returncode == 0, res.stderr.decode()
    assert os.listdir(outdir) == ["o.itb"]
    assert big_fit.read_bytes() == before  # the input is never modified

    # Replacing the output with --force: a kill while writing keeps the old output, whole.
    old = out.read_bytes()
    proc = _start(_fit_sign(uri, softhsm, big_fit, out, "--force", "--comment", "second"), softhsm)
    _kill_when(proc, lambda: any(t.endswith("(deleted)") for t in _open_in(proc.pid, outdir)))
    assert out.read_bytes() == old
    assert [n for n in os.listdir(outdir) if n != "o.itb" and not TEMP.match(n)] == []
    res = run_cli(_fit_sign(uri, softhsm, big_fit, out, "--force", "--comment", "second"), softhsm,
                  env={"SOURCE_DATE_EPOCH": EPOCH})
    assert res.returncode == 0, res.stderr.decode()
    assert os.listdir(outdir) == ["o.itb"] and out.read_bytes() != old


@pytest.mark.slow
def test_verity_sign_killed_while_writing_leaves_nothing_after_the_next_run(softhsm, tmp_path):
    uris = token_certs(softhsm, tmp_path / "certs", names=("verity",))
    image = tmp_path / "rootfs.img"
    with open(image, "wb") as f:
        f.truncate(256 << 20)
    outdir = tmp_path / "deploy"
    outdir.mkdir()
    args = ["verity", "sign", "--key", uris["verity"], "--cert", str(tmp_path / "certs" / "verity.pem"),
            "--in", str(image), "--out-dir", str(outdir / "verity"), "--appended", "--salt", "ab" * 32,
            "--pin-file", str(softhsm.pin_file)]
    proc = _start(args, softhsm)

    def copying() -> bool:
        return any(TEMP.match(n) and int(TEMP.match(n)[1]) == proc.pid for n in os.listdir(outdir)) \
            and bool(_open_in(proc.pid, outdir))
    _kill_when(proc, copying)
    (left,) = os.listdir(outdir)  # a directory cannot be unnamed: the killed writer's temporary is there
    assert TEMP.match(left) and (outdir / left).is_dir()
    res = run_cli(args, softhsm)
    assert res.returncode == 0, res.stderr.decode()
    assert os.listdir(outdir) == ["verity"]
    assert (outdir / "verity" / "rootfs.verity.img").stat().st_size > 256 << 20


def test_stale_temporaries_are_only_those_of_dead_writers(tmp_path):
    """Removed: a dead writer's file and directory, and one whose PID now belongs to a process
    started later. Kept: a live writer's, and every name not of segway's temporary pattern."""
    live = subprocess.Popen(["sleep", "600"])
    dead = subprocess.Popen(["true"])
    dead.wait()
    try:
        mine = atomic.temp_name("out.itb")
        marks = re.match(r"^(\.out\.itb\.segway-[0-9a-f]{8}-[0-9a-f]{8}-)(\d+)-(\d+)(-[0-9a-f]{6}\.tmp)$", mine)
        prefix, suffix = marks[1], marks[4]
        names = {
            "live": f"{prefix}{live.pid}-{_start_time(live.pid)}{suffix}",
            "dead": f"{prefix}{dead.pid}-{_start_time(os.getpid())}{suffix}",
            "reused": f"{prefix}{live.pid}-{int(_start_time(live.pid)) - 1}{suffix}",
            "dead-dir": f"{prefix}{dead.pid}-1".replace(".out.itb.", ".dir.") + suffix,
            "old-style": ".out.itb.k2j4l5mx.tmp",
            "other": "notes.tmp",
            "other-machine": f".out.itb.segway-00000000-{mine.split('-')[2]}-{dead.pid}-1{suffix}",
        }
        for kind, name in names.items():
            if kind == "dead-dir":
                (tmp_path / name).mkdir()
                (tmp_path / name / "content").write_bytes(b"x")
            else:
                (tmp_path / name).write_bytes(b"x")
        atomic.write_file(tmp_path / "out.itb", b"signed")
        left = set(os.listdir(tmp_path))
        assert left == {"out.itb", names["live"], names["old-style"], names["other"], names["other-machine"]}
        live.kill()
        live.wait()
        atomic.write_file(tmp_path / "second.bin", b"x")
        assert names["live"] not in os.listdir(tmp_path)
    finally:
        if live.poll() is None:
            live.kill()
            live.wait()


def _trace(args: list[str], tok, log: Path) -> list[str]:
    env = tok.run_env()
    env["SOURCE_DATE_EPOCH"] = EPOCH
    res = subprocess.run(["strace", "-f", "-qq", "-o", str(log), "-e",
                          "trace=openat,fsync,fdatasync,linkat,link,rename,renameat,renameat2,close",
                          SEGWAY_SIGN, *args], env=env, capture_output=True, timeout=600)
    assert res.returncode == 0, res.stderr.decode()
    return [re.sub(r"\s+= ", " = ", re.sub(r"^\d+\s+", "", line)) for line in log.read_text().splitlines()]


@pytest.mark.skipif(shutil.which("strace") is None, reason="needs strace")
def test_outputs_are_flushed_before_they_get_their_name(softhsm, tmp_path):
    """The system calls, as strace records them: the content is fsynced before the output name
    appears (linkat of the unnamed file, or rename of the temporary), and the directory after."""
    uri = softhsm.generate("rsa2048", "fit")
    src = make_unsigned_fit(tmp_path / "fit")
    out = tmp_path / "o.itb"
    calls = _trace(_fit_sign(uri, softhsm, src, out), softhsm, tmp_path / "a.log")
    tmpfile = next(i for i, c in enumerate(calls) if "O_TMPFILE" in c and f'"{tmp_path}"' in c)
    fd = re.search(r"= (\d+)$", calls[tmpfile])[1]
    link = next(i for i, c in enumerate(calls) if c.startswith("linkat(") and f'"{out}"' in c)
    assert f'"{fd}"' in calls[link] and "AT_SYMLINK_FOLLOW" in calls[link]
    assert f"fsync({fd}) = 0" in calls[tmpfile:link]
    dir_open = next(i for i, c in enumerate(calls) if i > link and c.startswith("openat(") and f'"{tmp_path}"' in c
                    and "O_DIRECTORY" in c)
    dir_fd = re.search(r"= (\d+)$", calls[dir_open])[1]
    assert f"fsync({dir_fd}) = 0" in calls[dir_open:]

    # Replacing with --force: the finished, flushed file is linked to a temporary name and renamed.
    calls = _trace(_fit_sign(uri, softhsm, src, out, "--force"), softhsm, tmp_path / "b.log")
    tmpfile = next(i for i, c in enumerate(calls) if "O_TMPFILE" in c and f'"{tmp_path}"' in c)
    fd = re.search(r"= (\d+)$", calls[tmpfile])[1]
    rename = next(i for i, c in enumerate(calls) if c.startswith("rename") and f'"{out}"' in c)
    assert f"fsync({fd}) = 0" in calls[tmpfile:rename]
    assert any(c.startswith("linkat(") and ".o.itb.segway-" in c for c in calls[tmpfile:rename])
    assert any(c.startswith("fsync(") for c in calls[rename:])
    assert os.listdir(tmp_path).count("o.itb") == 1 and not any(TEMP.match(n) for n in os.listdir(tmp_path))


@pytest.mark.skipif(shutil.which("strace") is None, reason="needs strace")
def test_output_directory_is_flushed_before_it_gets_its_name(softhsm, tmp_path):
    uris = token_certs(softhsm, tmp_path / "certs", names=("verity",))
    image = tmp_path / "rootfs.img"
    image.write_bytes(os.urandom(64 * 4096))
    out = tmp_path / "verity"
    args = ["verity", "sign", "--key", uris["verity"], "--cert", str(tmp_path / "certs" / "verity.pem"),
            "--in", str(image), "--out-dir", str(out), "--pin-file", str(softhsm.pin_file)]
    calls = _trace(args, softhsm, tmp_path / "v.log")
    rename = next(i for i, c in enumerate(calls) if c.startswith("rename") and f'"{out}"' in c)
    synced, opened = set(), None
    for call in calls[:rename]:
        m = re.match(r'openat\(AT_FDCWD, "([^"]+)", O_RDONLY\|O_CLOEXEC(\|O_DIRECTORY)?\) = (\d+)$', call)
        if m:
            opened = (m[1], m[3])
        elif call.startswith("fsync(") and opened and call.startswith(f"fsync({opened[1]})"):
            synced.add(Path(opened[0]).name)
    assert {"rootfs.hashtree", "rootfs.roothash", "rootfs.roothash.p7s", "verity.env"} <= synced
    assert any(TEMP.match(name) for name in synced)  # the directory itself
    assert any(c.startswith("fsync(") for c in calls[rename:])
    assert not any(TEMP.match(name) for name in os.listdir(tmp_path))


@pytest.mark.skipif(shutil.which("strace") is None, reason="needs strace")
def test_release_is_flushed_before_it_gets_its_name(softhsm, tmp_path):
    """Every file and directory of a release, the appended verity image included (its step only
    starts its writeback and leaves the flush to the release), is fsynced before the release
    directory is renamed into place."""
    uris = token_certs(softhsm, tmp_path / "certs", names=("verity", "release"))
    deploy = make_deploy(tmp_path)
    doc = plan_doc(uris)
    doc["steps"][1]["options"]["layout"] = "appended"
    plan = write_plan(tmp_path / "plan.yaml", doc)
    out = tmp_path / "release"
    calls = _trace(["release", "--plan", str(plan), "--deploy-dir", str(deploy), "--out", str(out), "--certs",
                    str(tmp_path / "certs"), "--pin-file", str(softhsm.pin_file)], softhsm, tmp_path / "r.log")
    rename = next(i for i, c in enumerate(calls) if c.startswith("rename") and f'"{out}"' in c)
    synced, opened = set(), {}
    for call in calls[:rename]:
        m = re.match(r'openat\(AT_FDCWD, "([^"]+)", O_RDONLY\|O_CLOEXEC(\|O_DIRECTORY)?\) = (\d+)$', call)
        if m:
            opened[m[3]] = m[1]
        m = re.match(r"fsync\((\d+)\) = 0$", call)
        if m and m[1] in opened:
            synced.add(opened[m[1]])
    tmp = next(Path(p) for p in synced if TEMP.match(Path(p).name) and Path(p).parent == tmp_path)
    written = {tmp / p.relative_to(out) for p in out.rglob("*")} | {tmp}
    assert any(p.name == "rootfs.verity.img" for p in written)
    assert written <= {Path(p) for p in synced}, sorted(map(str, written - {Path(p) for p in synced}))
    assert any(c.startswith("fsync(") for c in calls[rename:])
