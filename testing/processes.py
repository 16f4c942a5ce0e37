"""Start real Celery workers and management commands in subprocesses (tests, benchmarks)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import warnings
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import quote

ROOT = Path(__file__).resolve().parents[1]
REDIS_HOST, REDIS_PORT = "127.0.0.1", 6379


def port_open(host: str, port: int, timeout: float = 1.0) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nobody listens on now (for a server a test starts itself)."""
    with socket.socket() as probe:
        probe.bind((host, 0))
        return int(probe.getsockname()[1])


def database_url(settings_dict: Mapping[str, Any]) -> str:
    """A DATABASE_URL for the database Django is connected to (the test database in tests)."""
    engine = settings_dict["ENGINE"]
    name = str(settings_dict["NAME"])
    if engine.endswith("sqlite3"):
        return "sqlite:///" + str(Path(name).resolve())
    user = quote(settings_dict.get("USER") or "")
    password = settings_dict.get("PASSWORD") or ""
    auth = f"{user}:{quote(password)}@" if password else (f"{user}@" if user else "")
    host = settings_dict.get("HOST") or "127.0.0.1"
    port = settings_dict.get("PORT") or 5432
    return f"postgres://{auth}{host}:{port}/{name}"


def child_env(**overrides: str) -> dict[str, str]:
    env = dict(os.environ)
    env.pop("DJANGO_SETTINGS_MODULE", None)
    env.update(overrides)
    env.setdefault("PYTHONUNBUFFERED", "1")
    # A child that hangs can be made to print every thread's stack (SIGABRT): see dump_stacks.
    env.setdefault("PYTHONFAULTHANDLER", "1")
    return env


@contextmanager
def celery_worker(
    env: Mapping[str, str],
    *,
    queues: str = "ingest,llm",
    pool: str = "threads",
    concurrency: int = 4,
    name: str = "test",
    log_path: Path | None = None,
    extra_args: tuple[str, ...] = (),
) -> Iterator[subprocess.Popen[bytes]]:
    """A real worker process; stopped (warm, then killed) when the block ends."""
    process = start_worker(
        env,
        queues=queues,
        pool=pool,
        concurrency=concurrency,
        name=name,
        log_path=log_path,
        extra_args=extra_args,
    )
    try:
        yield process
    finally:
        stop_process(process)


def start_worker(
    env: Mapping[str, str],
    *,
    queues: str = "ingest,llm",
    pool: str = "threads",
    concurrency: int = 4,
    name: str = "test",
    log_path: Path | None = None,
    extra_args: tuple[str, ...] = (),
) -> subprocess.Popen[bytes]:
    command = [
        sys.executable, "-m", "celery", "-A", "masscer", "worker",
        "-Q", queues, "-P", pool, "-c", str(concurrency),
        "-n", f"{name}-{os.getpid()}-{time.monotonic_ns()}@%h",
        "--without-gossip", "--without-mingle", "--without-heartbeat",
        "--loglevel", "INFO", *extra_args,
    ]  # fmt: skip
    output = open(log_path, "ab") if log_path else subprocess.DEVNULL  # noqa: SIM115
    return subprocess.Popen(
        command,
        cwd=ROOT,
        env=dict(env),
        stdout=output,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )


def start_ready_worker(
    env: Mapping[str, str], *, log_path: Path, timeout: float = 45.0, **options: Any
) -> subprocess.Popen[bytes]:
    """`start_worker`, then wait until it is ready to consume.

    A worker that stays silent past `timeout` (seen once in CI: a restarted worker wrote
    nothing, not even its banner, for 90 s, and never again in 12 runs in a loop) is killed
    with a dump of its threads' stacks, which is reported as a warning, and started once
    more; a second failure fails the test.
    """
    for attempt in (1, 2):
        since = log_size(log_path)
        process = start_worker(env, log_path=log_path, **options)
        if wait_worker_ready(process, log_path, since=since, timeout=timeout):
            return process
        stacks = dump_stacks(process, log_path, since=since)
        name = options.get("name", "test")
        message = f"worker {name} not ready after {timeout:g} s (start {attempt}); its log:\n{stacks}"
        if attempt == 2:
            raise RuntimeError(message)
        warnings.warn(message, RuntimeWarning, stacklevel=2)
    raise AssertionError("unreachable")


def log_size(log_path: Path) -> int:
    return log_path.stat().st_size if log_path.exists() else 0


def wait_worker_ready(
    process: subprocess.Popen[bytes], log_path: Path, *, since: int = 0, timeout: float = 60.0
) -> bool:
    """Until the worker logs that it is ready, after byte ``since`` of its log (a restarted
    worker appends to the log of the one before). False if it exits or the time runs out."""

    def ready() -> bool:
        if process.poll() is not None:
            return True
        if not log_path.exists():
            return False
        with open(log_path, "rb") as handle:
            handle.seek(since)
            return b" ready." in handle.read()

    return wait_for(ready, timeout=timeout, interval=0.1) and process.poll() is None


def dump_stacks(process: subprocess.Popen[bytes], log_path: Path, *, since: int = 0) -> str:
    """Kill a hung child with SIGABRT, which PYTHONFAULTHANDLER turns into a dump of every
    thread's stack in its log; return what it wrote after byte ``since``."""
    if process.poll() is None:
        os.kill(process.pid, signal.SIGABRT)
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            kill_process(process)
    with open(log_path, "rb") as handle:
        handle.seek(since)
        return handle.read().decode("utf-8", "replace")[-6000:]


def stop_process(process: subprocess.Popen[bytes], *, timeout: float = 15.0) -> None:
    """SIGTERM to the process alone (a Celery worker then stops its own pool children, warm),
    then SIGKILL to its whole group if it has not exited within ``timeout``."""
    if process.poll() is not None:
        return
    try:
        # Not the group: pool children that get SIGTERM from outside die under the parent's
        # feet, and it reports them lost (WorkerLostError) during an orderly shutdown.
        os.kill(process.pid, signal.SIGTERM)
        process.wait(timeout=timeout)
    except (ProcessLookupError, subprocess.TimeoutExpired):
        kill_process(process)


def kill_process(process: subprocess.Popen[bytes]) -> None:
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except ProcessLookupError:
        return
    process.wait(timeout=10)


def manage(
    *args: str, env: Mapping[str, str], timeout: float = 300, check: bool = False
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "manage.py", *args],
        cwd=ROOT,
        env=dict(env),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=check,
    )


def start_beat(env: Mapping[str, str], *, schedule: Path, log_path: Path | None = None) -> subprocess.Popen[bytes]:
    """Celery beat (the lease sweeper's clock) with its schedule file in a temporary place."""
    output = open(log_path, "ab") if log_path else subprocess.DEVNULL  # noqa: SIM115
    return subprocess.Popen(
        [sys.executable, "-m", "celery", "-A", "masscer", "beat", "-s", str(schedule), "--loglevel", "INFO"],
        cwd=ROOT, env=dict(env), stdout=output, stderr=subprocess.STDOUT, start_new_session=True,
    )  # fmt: skip


def start_redis(port: int, *, workdir: Path) -> subprocess.Popen[bytes]:
    """A Redis server of the test's own (no persistence), for broker-restart faults."""
    process = subprocess.Popen(
        ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
         "--dir", str(workdir)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )  # fmt: skip
    deadline = time.monotonic() + 10
    while not port_open("127.0.0.1", port):
        if time.monotonic() > deadline or process.poll() is not None:
            raise RuntimeError(f"redis-server did not start on port {port}")
        time.sleep(0.05)
    return process


def wait_for(predicate: Any, *, timeout: float, interval: float = 0.2) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return bool(predicate())


def broker_env() -> dict[str, str]:
    """Broker settings for a test's workers: the shared Redis, under a key prefix of its own.

    Real Redis is required when CI is set (a failure), else the test is skipped. The prefix
    keeps concurrent test runs on one Redis from consuming each other's messages.
    """
    import pytest

    if not port_open(REDIS_HOST, REDIS_PORT):
        message = f"Redis is not reachable at {REDIS_HOST}:{REDIS_PORT}"
        if os.environ.get("CI"):
            pytest.fail(message + " and CI is set: the worker tests must run")
        pytest.skip(message)
    return {
        "CELERY_BROKER_URL": f"redis://{REDIS_HOST}:{REDIS_PORT}/14",
        "CELERY_BROKER_KEYPREFIX": f"masscer-test-{os.getpid()}-{time.monotonic_ns()}:",
    }


def fake_model_worker_env(fake_llm: Any, tmp_path: Path, **extra: str) -> dict[str, str]:
    """The environment of workers (and `manage.py` commands) on the test database Django is
    connected to, a private Redis broker and the fake model server (`testing/fakellm`);
    `extra` adds or overrides settings (chunk sizes, leases, ...)."""
    from django.db import connection

    return child_env(
        **{
            "DATABASE_URL": database_url(connection.settings_dict),
            **broker_env(),
            "CELERY_TASK_ALWAYS_EAGER": "false",
            "MASSCER_LLM_BASE_URL": fake_llm.base_url,
            "MASSCER_LLM_API_KEY": "sk-test-secret-key",
            "MASSCER_LLM_MODEL": "fake-model",
            "MASSCER_LLM_MODE": "chat",
            "MASSCER_MEDIA_ROOT": str(tmp_path / "uploads"),
            "MASSCER_CLI_USER": "alice",
            **extra,
        }
    )
