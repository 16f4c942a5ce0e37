"""Logs: JSON lines in production, readable lines in development, with the request id of each web
request and the task, job and work-item ids of each task."""
from __future__ import annotations

import io
import json
import logging
import secrets
from collections.abc import Iterator
from pathlib import Path

import pytest
from django.db import connection

from masscer import logs
from testing.processes import broker_env, celery_worker, child_env, database_url, manage
from training.models import TrainingJob, WorkItem

SAMPLES = Path(__file__).resolve().parents[2].parent / "shared" / "samples"
SAY_SOMETHING = (
    "from django.test import Client; import logging\n"
    "response = Client().get('/metrics', secure=True, HTTP_X_REQUEST_ID='req-42')\n"
    "logging.getLogger('masscer.example').warning('counted %s things', 3, extra={'things': 3})\n"
)


def run_shell(tmp_path: Path, code: str, **env: str) -> list[str]:
    """Run `code` in a fresh process of the project; the lines it logged (stderr)."""
    environment = child_env(MASSCER_VAR_DIR=str(tmp_path), DJANGO_SECRET_KEY=secrets.token_urlsafe(50), **env)
    result = manage("shell", "-c", code, env=environment, timeout=120)
    assert result.returncode == 0, result.stderr
    return [line for line in result.stderr.splitlines() if line.strip()]


def test_production_logs_are_json_lines_with_the_request_id(tmp_path) -> None:
    lines = run_shell(tmp_path, SAY_SOMETHING, DJANGO_DEBUG="0")
    records = [json.loads(line) for line in lines]  # every line, warnings included, is one JSON object
    access = [r for r in records if r["logger"] == "masscer.request"]
    assert len(access) == 1, records
    assert access[0]["request_id"] == "req-42"
    assert access[0]["path"] == "/metrics" and access[0]["status"] == 200 and access[0]["ms"] >= 0
    said = next(r for r in records if r["logger"] == "masscer.example")
    assert said["message"] == "counted 3 things" and said["things"] == 3 and said["level"] == "WARNING"
    assert "request_id" not in said  # written after the request, outside it
    assert said["time"].endswith("+00:00")


def test_development_logs_are_readable_lines(tmp_path) -> None:
    lines = run_shell(tmp_path, SAY_SOMETHING, DJANGO_DEBUG="1")
    said = [line for line in lines if "masscer.example" in line]
    assert len(said) == 1 and said[0].endswith("WARNING masscer.example: counted 3 things")
    assert not any(line.startswith("{") for line in lines)


def test_the_log_format_can_be_chosen(tmp_path) -> None:
    lines = run_shell(tmp_path, SAY_SOMETHING, DJANGO_DEBUG="1", MASSCER_LOG_FORMAT="json")
    assert json.loads(lines[-1])["message"] == "counted 3 things"
    environment = child_env(MASSCER_VAR_DIR=str(tmp_path), DJANGO_DEBUG="1", MASSCER_LOG_FORMAT="xml")
    refused = manage("check", env=environment, timeout=120)
    assert refused.returncode != 0 and "MASSCER_LOG_FORMAT must be 'json' or 'text'" in refused.stderr


# --- request ids ---------------------------------------------------------------------------------


@pytest.fixture
def captured() -> Iterator[io.StringIO]:
    """The project's JSON formatter and context filter on the request logger, into a buffer."""
    buffer = io.StringIO()
    handler = logging.StreamHandler(buffer)
    handler.setFormatter(logs.JsonFormatter())
    handler.addFilter(logs.ContextFilter())
    logger = logging.getLogger("masscer.request")
    logger.addHandler(handler)
    level, logger.level = logger.level, logging.INFO
    yield buffer
    logger.removeHandler(handler)
    logger.setLevel(level)


@pytest.mark.django_db
def test_each_request_gets_an_id_in_its_logs_and_its_response(client, settings, captured) -> None:
    settings.MASSCER_ACCESS_LOG = True
    first, second = client.get("/metrics"), client.get("/metrics")
    ids = [first["X-Request-ID"], second["X-Request-ID"]]
    assert len(set(ids)) == 2 and all(len(value) == 32 for value in ids)
    logged = [json.loads(line)["request_id"] for line in captured.getvalue().splitlines()]
    assert logged == ids
    assert logs.current() == {}  # nothing is left bound after the request


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("sent", "kept"),
    [("req-42", True), ("0f8c6a1e-77b2-4c1a-9a51-3b1f", True), ("two words", False), ("x" * 200, False),
     ("id\r\nSet-Cookie: a=b", False), ("<script>", False)],
)  # fmt: skip
def test_an_incoming_request_id_is_kept_only_if_it_is_a_sane_token(client, sent, kept) -> None:
    returned = client.get("/metrics", HTTP_X_REQUEST_ID=sent)["X-Request-ID"]
    assert (returned == sent) is kept
    assert returned.isascii() and " " not in returned and len(returned) <= 128


def test_task_ids_are_taken_from_the_tasks_arguments_by_name() -> None:
    from training.tasks import batch_poll_task, generate_task

    assert logs.task_fields(generate_task, (17,), {}) == {"work_item_id": 17}
    assert logs.task_fields(batch_poll_task, (), {"job_id": 4}) == {"job_id": 4}
    assert logs.task_fields(generate_task, (1, 2, 3), {}) == {}  # not its signature: no ids, no error


# --- task logs from a real worker ----------------------------------------------------------------


@pytest.mark.integration
@pytest.mark.django_db(transaction=True)
def test_a_workers_task_logs_carry_the_task_job_and_work_item_ids(alice, agent, fake_llm, tmp_path) -> None:
    env = child_env(
        DATABASE_URL=database_url(connection.settings_dict),
        **broker_env(),
        MASSCER_LOG_FORMAT="json",
        MASSCER_LLM_BASE_URL=fake_llm.base_url,
        MASSCER_LLM_API_KEY="sk-test-secret-key",
        MASSCER_LLM_MODEL="fake-model",
        MASSCER_MEDIA_ROOT=str(tmp_path / "uploads"),
        MASSCER_CLI_USER="alice",
    )
    log = tmp_path / "worker.log"
    pdf = SAMPLES / "pdf" / "pdflatex-4-pages.pdf"
    with celery_worker(env, queues="ingest,llm", pool="threads", concurrency=2, name="logs", log_path=log):
        result = manage("train", str(pdf), "--count", "4", "--agent", "support", "--json", env=env, timeout=180)
    assert result.returncode == 0, result.stderr + log.read_text()[-3000:]
    job = TrainingJob.objects.get()
    items = set(WorkItem.objects.filter(job=job).values_list("pk", flat=True))

    records = [json.loads(line) for line in log.read_text().splitlines() if line.startswith("{")]
    generate = [r for r in records if r.get("task") == "training.tasks.generate_task"]
    assert generate, records[-20:]
    assert {r["work_item_id"] for r in generate} == items
    assert all(r["job_id"] == job.pk and r["task_id"] for r in generate), generate
    prepare = [r for r in records if r.get("task") == "training.tasks.job_prepare_task"]
    assert prepare and all(r["job_id"] == job.pk for r in prepare)
    ingest = [r for r in records if r.get("task") == "documents.tasks.ingest_document_task"]
    assert ingest and all(r["document_id"] for r in ingest)
    # Lines about no task (the worker starting, messages arriving) carry no task ids.
    assert any("ready." in r["message"] and "task_id" not in r for r in records)
