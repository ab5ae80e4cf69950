"""Refused requests in the audit log, rate-limited per principal.

Every audit entry costs a signature by the audit key and, with the TPM anchor, an NV write. Anyone who
can reach a socket can provoke refusals, so each principal gets a small budget of audited refusals per
minute; refusals over budget are counted and the count goes into that principal's next audited refusal.
"""
from __future__ import annotations

import logging
import threading
import time

log = logging.getLogger(__name__)
BUDGET = 10          # audited refusals per principal ...
WINDOW = 60.0        # ... per this many seconds


class DenialAudit:
    def __init__(self, chain, store, budget: int = BUDGET, window: float = WINDOW, clock=time.monotonic):
        self._chain = chain
        self._store = store
        self._budget = budget
        self._window = window
        self._clock = clock
        self._lock = threading.Lock()
        self._recent: dict[str, list[float]] = {}
        self._suppressed: dict[str, int] = {}

    def _admit(self, principal: str) -> int | None:
        """None if over budget (counted), else the number of refusals suppressed since the last entry."""
        now = self._clock()
        with self._lock:
            times = [t for t in self._recent.get(principal, []) if now - t < self._window]
            if len(times) >= self._budget:
                self._recent[principal] = times
                self._suppressed[principal] = self._suppressed.get(principal, 0) + 1
                return None
            self._recent[principal] = times + [now]
            return self._suppressed.pop(principal, 0)

    def record(self, principal: str, method: str, reason: str) -> None:
        principal = principal or "unauthenticated"
        suppressed = self._admit(principal)
        if suppressed is None:
            return
        params = {"reason": reason}
        if suppressed:
            params["suppressed_before"] = suppressed
        try:
            with self._store.transaction() as db:
                self._chain.append(db, principal, "Denied", method, params)
        except Exception:  # noqa: BLE001 - the refusal stands whether or not it could be logged
            log.exception("could not audit a refused %s by %s", method, principal)
