"""A re-entrant lock granted in the order it was asked for.

A backend serves one request at a time (one ESAPI context, one PKCS#11 session), so under many clients
every request queues for its lock. threading.RLock makes no promise about order: a thread that asks late
can overtake threads that have waited long, which shows as a long tail of latencies. Here each waiter
sleeps on a lock of its own, and the owner hands the lock straight to the oldest waiter when it leaves.
"""
from __future__ import annotations

import _thread
import collections
import threading


class FifoRLock:
    def __init__(self):
        self._mutex = _thread.allocate_lock()  # guards the fields below, held only briefly
        self._owner: int | None = None
        self._depth = 0
        self._waiters: collections.deque[tuple[int, _thread.LockType]] = collections.deque()

    def acquire(self) -> bool:
        me = threading.get_ident()
        if self._owner == me:  # only the owner itself can find its own ident here
            self._depth += 1
            return True
        with self._mutex:
            if self._owner is None:  # free, and then nobody waits: release() hands over to waiters
                self._owner, self._depth = me, 1
                return True
            turn = _thread.allocate_lock()
            turn.acquire()
            self._waiters.append((me, turn))
        turn.acquire()  # released by the previous owner once it has made this thread the owner
        return True

    def release(self) -> None:
        if self._owner != threading.get_ident():
            raise RuntimeError("cannot release a lock held by another thread")
        self._depth -= 1
        if self._depth:
            return
        with self._mutex:
            if self._waiters:
                ident, turn = self._waiters.popleft()
                self._owner, self._depth = ident, 1
                turn.release()
            else:
                self._owner = None

    def __enter__(self) -> bool:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()
