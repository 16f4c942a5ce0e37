"""Health probes: /healthz (the process answers) and /readyz (it can do its work). JSON, no login.

/readyz checks the database (reachable, every migration applied), the broker and the model
endpoint, each in a thread of its own bounded by MASSCER_HEALTH_TIMEOUT: a dead or hanging
dependency makes a quick 503, never a hung probe. The model check is remembered for
MASSCER_HEALTH_MODEL_CACHE_SECONDS, so probes every few seconds do not load the model server.
"""
from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import wait as wait_for
from dataclasses import dataclass, replace
from typing import Any

from django.conf import settings
from django.db import connection, connections
from django.db.migrations.executor import MigrationExecutor
from django.http import HttpRequest, JsonResponse
from django.views.decorators.http import require_safe

from masscer.lib import llm

# The longest error text a check reports (the reason, not a traceback).
ERROR_CHARS = 300


@dataclass(frozen=True)
class CheckResult:
    ok: bool
    ms: float
    error: str = ""

    def as_json(self) -> dict[str, Any]:
        shown: dict[str, Any] = {"ok": self.ok, "ms": round(self.ms, 1)}
        if self.error:
            shown["error"] = self.error
        return shown


# --- the checks: each returns quietly or raises with the reason ---------------------------------


def check_database() -> None:
    with connection.cursor() as cursor:
        cursor.execute("SELECT 1")


def check_migrations() -> None:
    executor = MigrationExecutor(connection)
    plan = executor.migration_plan(executor.loader.graph.leaf_nodes())
    if plan:
        names = ", ".join(f"{m.app_label}.{m.name}" for m, _ in plan[:5])
        raise RuntimeError(f"{len(plan)} migration(s) not applied: {names}{', ...' if len(plan) > 5 else ''}")


def check_broker() -> None:
    url = settings.CELERY_BROKER_URL
    timeout = settings.MASSCER_HEALTH_TIMEOUT
    if url.startswith(("redis://", "rediss://", "unix://")):
        import redis

        client = redis.Redis.from_url(url, socket_timeout=timeout, socket_connect_timeout=timeout)
        try:
            client.ping()
        finally:
            client.close()
    elif url.startswith("filesystem://"):
        folder = settings.CELERY_BROKER_TRANSPORT_OPTIONS["data_folder_in"]
        if not os.access(folder, os.W_OK | os.X_OK):
            raise RuntimeError(f"the broker folder {folder} is missing or not writable")
    elif not url.startswith("memory://"):
        from kombu import Connection

        with Connection(url, connect_timeout=timeout) as conn:
            conn.ensure_connection(max_retries=1, timeout=timeout)


_model_seen: dict[tuple[str, str], tuple[float, str | None]] = {}
_model_lock = threading.Lock()


def check_model() -> None:
    """GET /models at the endpoint (and that it offers the model), remembered for a few seconds."""
    from masscer.endpoint import llm_config

    if not settings.MASSCER_LLM_BASE_URL:
        raise RuntimeError("no model endpoint is set (MASSCER_LLM_BASE_URL)")
    config = replace(llm_config(), timeout=settings.MASSCER_HEALTH_TIMEOUT, max_retries=0)
    key = (config.base_url, config.model)
    with _model_lock:
        seen = _model_seen.get(key)
    if seen is not None and time.monotonic() - seen[0] < settings.MASSCER_HEALTH_MODEL_CACHE_SECONDS:
        problem = seen[1]
    else:
        problem = llm.check_endpoint(config)
        with _model_lock:
            _model_seen[key] = (time.monotonic(), problem)
    if problem:
        raise RuntimeError(problem)


CHECKS: dict[str, Callable[[], None]] = {
    "database": check_database,
    "migrations": check_migrations,
    "broker": check_broker,
    "model": check_model,
}
# One run of each check at a time: a hung one is not joined by another on every probe.
_running = {name: threading.Lock() for name in CHECKS}


def _run(name: str) -> CheckResult:
    started = time.perf_counter()
    if not _running[name].acquire(timeout=settings.MASSCER_HEALTH_TIMEOUT):
        return CheckResult(False, 0.0, "the previous check has not finished")
    try:
        CHECKS[name]()
    except Exception as exc:
        reason = str(exc).strip() or type(exc).__name__
        return CheckResult(False, (time.perf_counter() - started) * 1000, reason[:ERROR_CHARS])
    finally:
        _running[name].release()
        connections.close_all()  # this thread's own connections: the thread ends here
    return CheckResult(True, (time.perf_counter() - started) * 1000)


def readiness() -> dict[str, CheckResult]:
    """Every check, run side by side; one without an answer in time fails."""
    timeout = settings.MASSCER_HEALTH_TIMEOUT
    pool = ThreadPoolExecutor(max_workers=len(CHECKS), thread_name_prefix="readyz")
    try:
        futures: dict[str, Future[CheckResult]] = {name: pool.submit(_run, name) for name in CHECKS}
        wait_for(futures.values(), timeout=timeout + 0.5)
    finally:
        pool.shutdown(wait=False, cancel_futures=True)  # a hung check is left behind, not waited for
    late = CheckResult(False, timeout * 1000, f"no answer within {timeout:g} s")
    return {name: future.result() if future.done() else late for name, future in futures.items()}


@require_safe
def healthz(request: HttpRequest) -> JsonResponse:
    return _no_store(JsonResponse({"status": "ok"}))


@require_safe
def readyz(request: HttpRequest) -> JsonResponse:
    results = readiness()
    ready = all(result.ok for result in results.values())
    body = {"status": "ok" if ready else "fail", "checks": {name: r.as_json() for name, r in results.items()}}
    return _no_store(JsonResponse(body, status=200 if ready else 503))


def _no_store(response: JsonResponse) -> JsonResponse:
    response["Cache-Control"] = "no-store"
    return response
