"""Requests per API key per minute and per hour, counted in Redis or, without it, in process.

Fixed windows (the ``limits`` library's FixedWindowRateLimiter over Redis, ``ProcessWindows`` in
process): cheap, one counter per key and window, and the same answer from every API server that
shares the Redis. When Redis cannot be reached the limiter counts in process memory for
``REDIS_RETRY_SECONDS`` and then tries again:
requests keep being answered (never a 5xx), and the limits then hold per process, not per
deployment. Only authenticated requests are counted, so failed authentication costs a key nothing.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from limits import RateLimitItem, RateLimitItemPerHour, RateLimitItemPerMinute
from limits.storage import Storage, storage_from_string
from limits.strategies import FixedWindowRateLimiter
from limits.util import WindowStats

logger = logging.getLogger("dataferry.rate_limits")
REDIS_TIMEOUT_SECONDS = 0.25
REDIS_RETRY_SECONDS = 5.0


@dataclass(frozen=True)
class Policy:
    per_minute: int
    per_hour: int

    def items(self) -> list[tuple[str, RateLimitItem]]:
        return [
            ("minute", RateLimitItemPerMinute(self.per_minute)),
            ("hour", RateLimitItemPerHour(self.per_hour)),
        ]


@dataclass(frozen=True)
class Window:
    name: str
    limit: int
    seconds: int
    remaining: int
    reset_at: float  # unix seconds


@dataclass(frozen=True)
class Decision:
    """The outcome for one request, and the headers that tell the client where it stands."""

    allowed: bool
    windows: tuple[Window, ...]

    @property
    def tightest(self) -> Window:
        """The window to report: the spent one to wait for, else the one nearest its end."""
        if not self.allowed:
            spent = [w for w in self.windows if w.remaining <= 0] or list(self.windows)
            return max(spent, key=lambda w: w.reset_at)
        return min(self.windows, key=lambda w: (w.remaining, w.seconds))

    def headers(self, now: float | None = None) -> dict[str, str]:
        now = time.time() if now is None else now
        window = self.tightest
        reset_in = max(0, math.ceil(window.reset_at - now))
        headers = {
            # draft-ietf-httpapi-ratelimit-headers (structured fields) ...
            "RateLimit-Policy": ", ".join(
                f'"{w.name}";q={w.limit};w={w.seconds}' for w in self.windows
            ),
            "RateLimit": f'"{window.name}";r={max(0, window.remaining)};t={reset_in}',
            # ... and the widespread X- headers; Reset is a unix time, as GitHub's is.
            "X-RateLimit-Limit": str(window.limit),
            "X-RateLimit-Remaining": str(max(0, window.remaining)),
            "X-RateLimit-Reset": str(math.ceil(window.reset_at)),
        }
        if not self.allowed:
            headers["Retry-After"] = str(max(1, reset_in))
        return headers


class Windows(Protocol):
    """What the limiter asks of a counter store: ``limits``' fixed-window strategy's two calls."""

    def hit(self, item: RateLimitItem, *identifiers: str) -> bool: ...

    def get_window_stats(self, item: RateLimitItem, *identifiers: str) -> WindowStats: ...


class ProcessWindows:
    """Fixed windows counted in this process, as ``limits``' FixedWindowRateLimiter counts them
    (a window starts at its first hit; a hit counts even when refused).

    Not ``limits``' MemoryStorage: it starts a timer thread whenever a hit finds the last one gone,
    10 ms after it started, so nearly every request to a quiet server paid for a new thread and a
    sweep of every key (0.3 ms of CPU against 0.02 ms). Here an ended window is replaced when it
    is next hit, and ended windows are dropped all at once whenever the table has doubled."""

    SWEEP_AT_LEAST = 1024

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock  # unix seconds, as ``limits`` reports a window's reset
        self._windows: dict[str, tuple[float, int]] = {}  # key: (ends at, hits)
        self._sweep_at = self.SWEEP_AT_LEAST
        self._lock = threading.Lock()

    def hit(self, item: RateLimitItem, *identifiers: str) -> bool:
        key, now = item.key_for(*identifiers), self._clock()
        with self._lock:
            ends, hits = self._windows.get(key, (now, 0))
            if ends <= now:
                ends, hits = now + item.get_expiry(), 0
            self._windows[key] = (ends, hits + 1)
            if len(self._windows) >= self._sweep_at:
                self._sweep(now)
        return hits + 1 <= item.amount

    def get_window_stats(self, item: RateLimitItem, *identifiers: str) -> WindowStats:
        now = self._clock()
        with self._lock:
            ends, hits = self._windows.get(item.key_for(*identifiers), (now, 0))
        if ends <= now:
            return WindowStats(now, item.amount)
        return WindowStats(ends, max(0, item.amount - hits))

    def _sweep(self, now: float) -> None:
        self._windows = {key: kept for key, kept in self._windows.items() if kept[0] > now}
        self._sweep_at = max(self.SWEEP_AT_LEAST, 2 * len(self._windows))


class RateLimiter:
    def __init__(self, redis_url: str = "") -> None:
        self._memory = ProcessWindows()
        self._shared: FixedWindowRateLimiter | None = None
        if redis_url:
            storage = storage_from_string(
                _limits_url(redis_url),
                socket_timeout=REDIS_TIMEOUT_SECONDS,
                socket_connect_timeout=REDIS_TIMEOUT_SECONDS,
            )
            assert isinstance(storage, Storage)  # a redis:// URL names the synchronous storage
            self._shared = FixedWindowRateLimiter(storage)
        self._shared_down_until = 0.0
        self._lock = threading.Lock()

    @property
    def shared(self) -> bool:
        """True while counters live in Redis (configured and reachable at the last try)."""
        return self._shared is not None and time.monotonic() >= self._shared_down_until

    def hit(self, api_key_id: str, policy: Policy) -> Decision:
        """Count one request of ``api_key_id``; ``allowed`` is False once a window is spent."""
        if self.shared:
            assert self._shared is not None
            try:
                return self._hit(self._shared, api_key_id, policy)
            except Exception as exc:  # any storage failure means: count locally for a while
                self._mark_shared_down(exc)
        return self._hit(self._memory, api_key_id, policy)

    def _hit(self, limiter: Windows, key: str, policy: Policy) -> Decision:
        allowed, windows = True, []
        for name, item in policy.items():
            # Once one window refuses, the others are only read: a refused request costs nothing.
            allowed = allowed and limiter.hit(item, "api_key", key)
            stats = limiter.get_window_stats(item, "api_key", key)
            windows.append(
                Window(name, item.amount, item.get_expiry(), stats.remaining, stats.reset_time)
            )
        return Decision(allowed, tuple(windows))

    def _mark_shared_down(self, exc: Exception) -> None:
        with self._lock:
            if time.monotonic() >= self._shared_down_until:
                logger.warning(
                    "rate-limit store unreachable (%s); counting in this process for %.0fs",
                    type(exc).__name__,
                    REDIS_RETRY_SECONDS,
                )
            self._shared_down_until = time.monotonic() + REDIS_RETRY_SECONDS


def _limits_url(redis_url: str) -> str:
    """The setting takes redis-py's spelling of a Unix socket, ``unix://``; the ``limits``
    library names its Redis storage by scheme and knows that one as ``redis+unix://``."""
    return "redis+" + redis_url if redis_url.startswith("unix://") else redis_url
