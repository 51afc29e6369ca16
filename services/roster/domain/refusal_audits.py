"""Which refused API calls are written to the audit log.

Anyone can send the HTTP API a made-up access token, so writing every refusal would let a
script fill the audit log. The first refusal of each kind (reason, address, token) in a
window is written, and at most ``per_window`` in all; the rest are counted in metrics only.
"""
from __future__ import annotations

import time
from collections import OrderedDict, deque
from collections.abc import Callable, Hashable


class RefusalAuditBudget:
    def __init__(self, clock: Callable[[], float] = time.monotonic, window: float = 60.0, per_window: int = 60):
        self._clock = clock
        self.window = window
        self.per_window = per_window
        self._last_written: OrderedDict[Hashable, float] = OrderedDict()  # oldest first
        self._written: deque[float] = deque()

    def admit(self, kind: Hashable) -> bool:
        """Whether a refusal of this kind gets an audit row now (and count it if so)."""
        now = self._clock()
        horizon = now - self.window
        # both are in time order: what fell out of the window is at the front
        while self._last_written and next(iter(self._last_written.values())) <= horizon:
            self._last_written.popitem(last=False)
        while self._written and self._written[0] <= horizon:
            self._written.popleft()
        if kind in self._last_written or len(self._written) >= self.per_window:
            return False
        self._last_written[kind] = now
        self._written.append(now)
        return True
