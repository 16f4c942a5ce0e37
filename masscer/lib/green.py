"""Whether this process runs on gevent's monkey-patched stdlib (`celery worker -P gevent`).

The llm worker's green pool patches threading, sockets and select before anything else is
imported; the settings (a database connection pool) and the Celery signals (a task's own
connections closed when it ends) adapt to it. Nothing here imports gevent.
"""
from __future__ import annotations

import sys


def green_process() -> bool:
    """True when gevent has patched `threading` in this process (each "thread" a greenlet)."""
    monkey = sys.modules.get("gevent.monkey")
    return monkey is not None and bool(monkey.is_module_patched("threading"))
