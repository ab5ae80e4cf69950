"""The backends' lock: granted in arrival order, re-entrant, released only by its owner."""
from __future__ import annotations

import threading
import time

import pytest

from segway_kms.backends.fifolock import FifoRLock


def _wait_until_queued(lock: FifoRLock, count: int) -> None:
    deadline = time.monotonic() + 10
    while len(lock._waiters) < count:
        assert time.monotonic() < deadline, "threads did not queue for the lock"
        time.sleep(0.001)


def test_waiters_get_the_lock_in_the_order_they_asked():
    lock = FifoRLock()
    order: list[int] = []
    lock.acquire()
    threads = []
    for i in range(8):
        t = threading.Thread(target=lambda i=i: (lock.acquire(), order.append(i), lock.release()))
        t.start()
        _wait_until_queued(lock, i + 1)  # thread i asks before thread i + 1
        threads.append(t)
    # a latecomer asking while the queue drains still comes last
    lock.release()
    late = threading.Thread(target=lambda: (lock.acquire(), order.append(99), lock.release()))
    late.start()
    for t in threads + [late]:
        t.join(10)
    assert order == list(range(8)) + [99]
    assert lock._owner is None and not lock._waiters


def test_reentrant_and_owned():
    lock = FifoRLock()
    with lock:
        with lock:  # the TPM backend reconnects inside a guarded call
            assert lock._depth == 2
        errors = []

        def other():
            try:
                lock.release()
            except RuntimeError as exc:
                errors.append(str(exc))
        t = threading.Thread(target=other)
        t.start()
        t.join(10)
        assert errors == ["cannot release a lock held by another thread"]
    assert lock._owner is None
    with pytest.raises(RuntimeError):
        lock.release()


def test_many_threads_exclusive():
    lock = FifoRLock()
    inside = []
    count = [0]

    def work():
        for _ in range(200):
            with lock:
                inside.append(1)
                assert len(inside) == 1
                count[0] += 1
                inside.pop()
    threads = [threading.Thread(target=work) for _ in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert count[0] == 16 * 200
