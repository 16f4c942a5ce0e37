"""Keep leases alive while their holder works: one daemon thread per process renews them all.

Work is claimed with a short lease (a row's ``lease_expires_at``) so that a dead worker's work
is taken over within seconds. A model call or an extraction can outlast such a lease, so the
holder registers a ``renew`` callable for as long as it works (`Heartbeat.hold`), and this
process's heartbeat thread calls every registered one each ``interval`` seconds. ``renew``
returns False once the lease is no longer the holder's (someone took it over): it is then
dropped. A failing ``renew`` (the database is away) is tried again after ``retry`` seconds,
since a lease that lapsed unnoticed is only taken over when someone else claims it.

No Django here: ``renew`` does its own database work, and ``on_tick_end`` (for example,
closing the thread's database connection when it broke) is the caller's to give.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Hashable, Iterator
from contextlib import contextmanager

logger = logging.getLogger(__name__)

Renew = Callable[[], bool]


class Heartbeat:
    def __init__(
        self, *, interval: float, retry: float = 2.0, on_tick_end: Callable[[bool], None] | None = None
    ) -> None:
        self.interval = interval
        self.retry = min(retry, interval)
        self.on_tick_end = on_tick_end
        self._held: dict[Hashable, Renew] = {}
        self._lock = threading.Lock()
        self._wake = threading.Condition(self._lock)
        self._thread: threading.Thread | None = None
        self.ticks = 0

    @contextmanager
    def hold(self, key: Hashable, renew: Renew) -> Iterator[None]:
        """Renew the lease ``key`` with ``renew`` until the block ends."""
        with self._lock:
            self._held[key] = renew
            self._start()
        try:
            yield
        finally:
            with self._lock:
                if self._held.get(key) is renew:
                    del self._held[key]

    def held(self) -> list[Hashable]:
        with self._lock:
            return list(self._held)

    def _start(self) -> None:
        # Started on first use, so a process forked before that (a prefork pool child) gets its own.
        if self._thread is None or not self._thread.is_alive():
            self._thread = threading.Thread(target=self._run, name="lease-heartbeat", daemon=True)
            self._thread.start()

    def _run(self) -> None:
        while True:
            with self._lock:
                self._wake.wait(self.interval if self._healthy else self.retry)
                held = list(self._held.items())
            self._healthy = self.tick(held)

    _healthy = True

    def tick(self, held: list[tuple[Hashable, Renew]] | None = None) -> bool:
        """Renew every held lease once; False if any renewal failed (and is to be tried again soon)."""
        if held is None:
            with self._lock:
                held = list(self._held.items())
        healthy = True
        for key, renew in held:
            try:
                if not renew():
                    self._drop(key, renew)
            except Exception:  # noqa: BLE001 - a database or network error: try again soon
                healthy = False
                logger.warning("renewing the lease %r failed; trying again in %.0f s", key, self.retry, exc_info=True)
        self.ticks += 1
        if self.on_tick_end is not None:
            self.on_tick_end(healthy)
        return healthy

    def _drop(self, key: Hashable, renew: Renew) -> None:
        with self._lock:
            if self._held.get(key) is renew:
                del self._held[key]
