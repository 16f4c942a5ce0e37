"""The llm worker as the Procfile starts it holds more model calls in flight than it has OS threads.

Model calls are I/O: a worker that needs one thread per call in flight (`-P threads -c N`) holds
N thread stacks and hands the GIL around N threads for N replies. The Procfile's llm worker runs
a green pool instead (B9 in BENCHMARKS.md); this starts it from the Procfile's own line against
the fake model server (3 s per call) with a job of about 40 one-pair work items, all due at once.
"""
from __future__ import annotations

import json
import os
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from testing.processes import (
    ROOT,
    celery_worker,
    fake_model_worker_env,
    manage,
    stop_process,
    wait_worker_ready,
)
from testing.procfile import option, procfile_command

pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True)]

WORDS = [
    "granite", "basalt", "quartz", "feldspar", "mica", "shale", "slate", "marble", "gneiss", "schist",
    "dolomite", "chalk", "flint", "obsidian", "pumice", "tuff", "loess", "clay", "silt", "sand",
    "gravel", "boulder", "cobble", "pebble",
]  # fmt: skip
SECTIONS = 40


def os_threads(pid: int) -> int:
    """The process's OS threads now (0 once it is gone)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return 0
    return next(int(line.split()[1]) for line in status.splitlines() if line.startswith("Threads:"))


class ThreadPeak:
    """The most OS threads a process had while the block ran (sampled every 50 ms)."""

    def __init__(self, pid: int) -> None:
        self.pid, self.peak = pid, os_threads(pid)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        while not self._stop.wait(0.05):
            self.peak = max(self.peak, os_threads(self.pid))

    def __enter__(self) -> ThreadPeak:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        self._thread.join(timeout=2)


def handbook(path: Path) -> Path:
    """A Markdown file of SECTIONS short sections, each a chunk of its own at 120 tokens."""
    parts = []
    for number in range(SECTIONS):
        words = [WORDS[(number * 7 + i * 3) % len(WORDS)] for i in range(45)]
        parts.append(f"## Site {number}\n\nAt site {number} the survey found {' '.join(words)}.")
    path.write_text("\n\n".join(parts) + "\n")
    return path


@pytest.fixture
def pool_env(fake_llm: Any, tmp_path: Path) -> dict[str, str]:
    fake_llm.configure(latency=3.0, capacity=None)
    env = fake_model_worker_env(
        fake_llm,
        tmp_path,
        MASSCER_LLM_MAX_CONCURRENCY="0",
        MASSCER_JUDGE_DEFAULT="0",
        MASSCER_CHUNK_TOKENS="120",
        MASSCER_CHUNK_OVERLAP="0",
        MASSCER_SPAN_MAX_TOKENS="120",  # one chunk per work item: one call each
    )
    for name in ("MASSCER_LLM_POOL", "MASSCER_LLM_WORKER_CONCURRENCY"):
        env.pop(name, None)  # the Procfile's defaults, not the shell's
    return env


@pytest.fixture
def procfile_llm_worker(
    pool_env: dict[str, str], tmp_path: Path
) -> Iterator[tuple[subprocess.Popen[bytes], list[str]]]:
    """The Procfile's llm worker (a node name of its own) next to a prefork ingest worker."""
    log = tmp_path / "llm.log"
    command = procfile_command("llm", pool_env)
    command = [f"llm-{os.getpid()}-{time.monotonic_ns()}@%h" if w == "llm@%h" else w for w in command]
    with celery_worker(pool_env, queues="ingest", pool="prefork", concurrency=1, name="ingest", log_path=log):
        process = subprocess.Popen(  # noqa: S603 - the Procfile's own command line
            command, cwd=ROOT, env=pool_env, stdout=open(log, "ab"), stderr=subprocess.STDOUT, start_new_session=True  # noqa: SIM115
        )
        try:
            assert wait_worker_ready(process, log, timeout=60), log.read_text()[-3000:]
            yield process, command
        finally:
            stop_process(process)


def test_the_procfile_llm_worker_holds_more_calls_in_flight_than_it_has_threads(
    procfile_llm_worker, pool_env, fake_llm, tmp_path
) -> None:
    process, command = procfile_llm_worker
    source = handbook(tmp_path / "handbook.md")
    with ThreadPeak(process.pid) as threads:
        result = manage(
            "train", str(source), "--count", str(SECTIONS), "--agent", "geo", "--json", env=pool_env, timeout=240
        )
    assert result.returncode == 0, result.stderr + result.stdout
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    assert summary["status"] == "completed" and summary["completions_created"] == SECTIONS, summary

    in_flight = fake_llm.max_in_flight
    concurrency = int(option(command, "-c") or 0)
    assert in_flight >= 30, f"only {in_flight} calls in flight at once ({summary['model_calls']} calls)"
    assert in_flight > threads.peak, (
        f"{in_flight} calls in flight with {threads.peak} OS threads (-P {option(command, '-P')} -c {concurrency})"
    )
    assert concurrency >= in_flight
