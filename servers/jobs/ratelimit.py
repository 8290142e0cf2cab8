"""Per-key, per-route sliding 60 s window request counters, in bounded memory."""

from __future__ import annotations

import math
import time
from collections import OrderedDict, deque
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
    """Counts requests per ``(key, route)`` in a sliding window, keeping at most ``max_windows`` windows.

    Keys are identities the server vouches for (an authenticated key's id, a client address), never
    raw client input, so the number of windows follows the number of real callers. Past
    ``max_windows`` the least recently used window is forgotten: memory stays bounded whatever the
    traffic, at the price of a fresh window for a caller idle long enough to be the oldest.

    Parameters
    ----------
    window_s
        Length of the window, seconds (60 per the contract).
    clock
        Wall clock in Unix seconds (injected in tests).
    max_windows
        Most ``(key, route)`` windows kept at once (each holds at most ``limit`` timestamps).
    """

    def __init__(self, window_s: float = 60.0, clock: Callable[[], float] = time.time,
                 max_windows: int = 10_000) -> None:
        if max_windows < 1:
            raise ValueError(f"max_windows must be >= 1, got {max_windows}")
        self.window_s = window_s
        self.max_windows = max_windows
        self._clock = clock
        self._hits: OrderedDict[tuple[str, str], deque[float]] = OrderedDict()
        self._pruned_at = 0.0

    def __len__(self) -> int:
        return len(self._hits)

    def _window(self, key: str, route: str, now: float) -> deque[float]:
        hits = self._hits.get((key, route))
        if hits is None:
            if len(self._hits) >= self.max_windows and now - self._pruned_at >= 1.0:  # O(n): at most 1/s
                self.prune()
            while len(self._hits) >= self.max_windows:
                self._hits.popitem(last=False)
            hits = self._hits[(key, route)] = deque()
        else:
            self._hits.move_to_end((key, route))
        while hits and hits[0] <= now - self.window_s:
            hits.popleft()
        return hits

    def peek(self, key: str, route: str, limit: int) -> Verdict:
        """Whether a request would fit now, without recording one."""
        now = self._clock()
        hits = self._window(key, route, now)
        if len(hits) >= limit:
            reset = hits[0] + self.window_s
            return Verdict(False, limit, 0, math.ceil(reset), max(1, math.ceil(reset - now)))
        reset = (hits[0] if hits else now) + self.window_s
        return Verdict(True, limit, limit - len(hits), math.ceil(reset), 0)

    def check(self, key: str, route: str, limit: int) -> Verdict:
        """Record a request if it fits in the window; refuse it otherwise."""
        verdict = self.peek(key, route, limit)
        if not verdict.allowed:
            return verdict
        now = self._clock()
        hits = self._hits[(key, route)]
        hits.append(now)
        reset = hits[0] + self.window_s
        return Verdict(True, limit, limit - len(hits), math.ceil(reset), 0)

    def prune(self) -> None:
        """Forget windows with no recent request (called by the sweeper and when the table is full)."""
        self._pruned_at = self._clock()
        horizon = self._pruned_at - self.window_s
        for k in [k for k, v in self._hits.items() if not v or v[-1] <= horizon]:
            del self._hits[k]
