"""Per-key, per-route sliding 60 s window request counters."""

from __future__ import annotations

import math
import time
from collections import deque
from dataclasses import dataclass
from typing import Callable

__all__ = ["RateLimiter", "Verdict"]


@dataclass(frozen=True)
class Verdict:
    """Outcome of one request: allowed or not, and the header values to send."""

    allowed: bool
    limit: int
    remaining: int
    reset_epoch_s: int
    retry_after_s: int


class RateLimiter:
    """Counts requests per ``(key, route)`` in a sliding window.

    Parameters
    ----------
    window_s
        Length of the window, seconds (60 per the contract).
    clock
        Monotonic-free wall clock in Unix seconds (injected in tests).
    """

    def __init__(self, window_s: float = 60.0, clock: Callable[[], float] = time.time) -> None:
        self.window_s = window_s
        self._clock = clock
        self._hits: dict[tuple[str, str], deque[float]] = {}

    def check(self, key: str, route: str, limit: int) -> Verdict:
        """Record a request if it fits in the window; refuse it otherwise."""
        now = self._clock()
        hits = self._hits.setdefault((key, route), deque())
        while hits and hits[0] <= now - self.window_s:
            hits.popleft()
        if len(hits) >= limit:
            reset = hits[0] + self.window_s
            return Verdict(False, limit, 0, math.ceil(reset), max(1, math.ceil(reset - now)))
        hits.append(now)
        reset = hits[0] + self.window_s
        return Verdict(True, limit, limit - len(hits), math.ceil(reset), 0)

    def prune(self) -> None:
        """Forget windows with no recent request (called by the sweeper)."""
        horizon = self._clock() - self.window_s
        for k in [k for k, v in self._hits.items() if not v or v[-1] <= horizon]:
            del self._hits[k]
