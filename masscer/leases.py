"""This process's lease heartbeat (masscer.lib.heartbeat) wired to the settings and the database.

Work items (training) and document extractions (documents) hold a short lease,
MASSCER_LEASE_SECONDS; while their holder works, the heartbeat renews it every third of that,
so a dead worker's work is taken over within about one lease plus one sweep.
"""
from __future__ import annotations

import threading

from django.conf import settings
from django.db import connection

from masscer.lib.heartbeat import Heartbeat

_heartbeat: Heartbeat | None = None
_lock = threading.Lock()


def _after_tick(healthy: bool) -> None:
    # Runs in the heartbeat thread, so this is that thread's own connection. It is closed
    # after every tick (one connect per tick, every few seconds): a broken one (the database
    # restarted) is never reused, and none is left open between ticks (a test database can
    # then be dropped).
    connection.close()


def heartbeat() -> Heartbeat:
    global _heartbeat
    with _lock:
        if _heartbeat is None:
            _heartbeat = Heartbeat(interval=max(0.5, settings.MASSCER_LEASE_SECONDS / 3), on_tick_end=_after_tick)
        return _heartbeat
