"""End to end on real components: `manage.py train` → Redis → real Celery workers → the fake model."""
from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from testing.processes import broker_env, celery_worker, fake_model_worker_env, manage

SAMPLES = Path(__file__).resolve().parents[2].parent / "shared" / "samples"
pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True)]


def require_redis() -> str:
    """A Redis URL for tests that talk to Redis themselves (not through workers)."""
    return broker_env()["CELERY_BROKER_URL"]


@pytest.fixture
def worker_env(fake_llm: Any, tmp_path: Path) -> dict[str, str]:
    return fake_model_worker_env(fake_llm, tmp_path)


@pytest.fixture
def workers(worker_env: dict[str, str], tmp_path: Path) -> Iterator[Path]:
    """The production topology in miniature: a prefork ingest worker and a threads llm worker."""
    log = tmp_path / "workers.log"
    with (
        celery_worker(worker_env, queues="ingest", pool="prefork", concurrency=1, name="ingest", log_path=log),
        celery_worker(worker_env, queues="llm", pool="threads", concurrency=4, name="llm", log_path=log),
    ):
        yield log


def test_train_runs_a_job_end_to_end_on_real_workers(worker_env, workers, fake_llm) -> None:
    pdf = SAMPLES / "pdf" / "pdflatex-4-pages.pdf"
    result = manage("train", str(pdf), "--count", "6", "--agent", "support", "--json", env=worker_env, timeout=180)
    assert result.returncode == 0, result.stderr + result.stdout + workers.read_text()[-3000:]
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    assert summary["status"] == "completed"
    assert summary["completions_created"] == 6 and summary["shortfall"] == 0, json.dumps(summary)
    assert summary["model_calls"] == len(fake_llm.calls) >= 1
    assert summary["prompt_tokens"] > 0 and summary["elapsed_seconds"] > 0

    exported = manage(
        "export", "--agent", "support", "--format", "records", "--status", "all", env=worker_env, timeout=60
    )
    assert exported.returncode == 0, exported.stderr
    records = [json.loads(line) for line in exported.stdout.splitlines()]
    assert len(records) == 6
    for record in records:
        assert record["agents"] == ["support"]
        assert record["source_type"] == "document"
        first, last = record["locator"]["pages"]
        assert 1 <= first <= last <= 4
        assert record["status"] == "pending" and record["job_id"] == summary["job_id"]

    approved = manage("export", "--agent", "support", "--format", "openai-jsonl", env=worker_env, timeout=60)
    assert approved.stdout == ""  # nothing reviewed yet: the default export is approved only


def test_train_exits_non_zero_with_the_reason_when_the_document_fails(worker_env, workers, fake_llm) -> None:
    pdf = SAMPLES / "pdf" / "libreoffice-writer-password.pdf"
    result = manage("train", str(pdf), "--count", "3", "--agent", "support", "--json", env=worker_env, timeout=120)
    assert result.returncode == 1
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    assert summary["status"] == "failed"
    assert "password" in summary["error"].lower()
    assert fake_llm.calls == []


def test_train_mines_an_imported_sharegpt_file_on_real_workers(worker_env, workers, fake_llm) -> None:
    path = SAMPLES / "conversations" / "sharegpt.json"
    result = manage(
        "train", str(path), "--count", "3", "--agent", "support", "--style", "mine", "--json",
        env=worker_env, timeout=180,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr + workers.read_text()[-3000:]
    assert "imported 2 conversation(s) (sharegpt)" in result.stderr
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    assert summary["status"] == "completed" and summary["completions_created"] == 3
