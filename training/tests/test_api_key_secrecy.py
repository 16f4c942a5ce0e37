"""The model endpoint's API key is server configuration: it is sent to the model and nowhere else.

A job runs end to end from the browser's point of view (upload, Train, the tasks the workers
would run) with a distinctive key, while every Celery message published, every log record of
every logger at DEBUG (openai, httpx and httpcore included) and the pages and API answers a user
or an admin sees are collected; the key must appear in none of them. The same when the model
refuses the key with a message that repeats it, as real providers do.
"""

from __future__ import annotations

import json
import logging
import secrets
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from celery.signals import before_task_publish
from django.core.files.uploadedfile import SimpleUploadedFile
from django.test import Client, RequestFactory
from django.views.debug import SafeExceptionReporterFilter, technical_500_response

from agents.models import Agent
from documents.models import Document
from masscer.celery import app
from masscer.endpoint import llm_config
from masscer.lib import llm
from masscer.tests.web import fast_passwords  # noqa: F401 - autouse fixture
from training.models import TrainingJob, WorkItem

SUFFIX = secrets.token_hex(16)
KEY = f"sk-test-LEAKCHECK-{SUFFIX}"
# The whole key, its random part, its marker, and the prefix of a partly masked key.
NEEDLES = (KEY, SUFFIX, "LEAKCHECK", KEY[:12])


def leaks(text: str) -> list[str]:
    return [needle for needle in NEEDLES if needle in text]


@pytest.fixture
def key(fake_llm: Any, settings: Any, tmp_path: Path) -> str:
    settings.MASSCER_LLM_API_KEY = KEY
    settings.MEDIA_ROOT = tmp_path
    return KEY


@pytest.fixture
def published() -> Iterator[list[dict[str, Any]]]:
    """Every Celery message as it is handed to the broker: body, headers, properties."""
    messages: list[dict[str, Any]] = []

    def record(sender: str | None = None, **fields: Any) -> None:
        messages.append(
            {
                "task": sender,
                **{name: fields.get(name) for name in ("body", "headers", "properties", "exchange", "routing_key")},
            }
        )

    before_task_publish.connect(record, weak=False)
    yield messages
    before_task_publish.disconnect(record)


@pytest.fixture
def every_log(caplog: pytest.LogCaptureFixture) -> Iterator[pytest.LogCaptureFixture]:
    """Every logger at DEBUG into caplog, including those the settings quiet (openai, httpx)."""
    names = set(logging.root.manager.loggerDict) | {"openai", "httpx", "httpcore", "celery", "kombu", "django"}
    saved = []
    for name in names:
        logger = logging.getLogger(name)
        saved.append((logger, logger.level, logger.disabled, logger.propagate))
        logger.setLevel(logging.DEBUG)
        logger.disabled = False
        logger.propagate = True
    caplog.set_level(logging.DEBUG)
    yield caplog
    for logger, level, disabled, propagate in saved:
        logger.setLevel(level)
        logger.disabled = disabled
        logger.propagate = propagate


def run_published(published: list[dict[str, Any]]) -> int:
    """Run the published tasks in order, as a worker would (tasks they publish run too)."""
    done = 0
    while done < len(published):
        message = published[done]
        args, kwargs, _embed = message["body"]
        app.tasks[message["task"]].apply(args=args, kwargs=kwargs, throw=True)
        done += 1
    return done


def train_from_the_browser(client: Client, published: list[dict[str, Any]]) -> TrainingJob:
    """Upload a document, let it be read, create an agent and ask for 4 completions."""
    text = b"# Service plans\n\n" + b"The Gold plan includes two services a year. " * 40
    upload = SimpleUploadedFile("handbook.md", text, content_type="text/markdown")
    assert client.post("/documents/", {"files": [upload]}).status_code == 302
    run_published(published)
    document = Document.objects.get()
    assert document.status == Document.Status.READY, document.error
    assert client.post("/agents/new/", {"name": "Support", "system_prompt": "Be kind."}).status_code == 302
    train = {
        "document": document.pk, "count": 4, "model": "fake-model", "temperature": "0.3", "top_p": "0.9",
        "max_tokens": "", "frequency_penalty": "0", "stop": "", "instructions": "", "agents": [Agent.objects.get().pk],
    }  # fmt: skip
    assert client.post("/jobs/new/", train).status_code in (200, 302)
    run_published(published)
    return TrainingJob.objects.get()


def pages_seen(alice_client: Client, root_client: Client, job: TrainingJob) -> dict[str, str]:
    """What a user and an admin can read about the job, by URL."""
    agent_id = job.agents.get().pk
    completion = job.completions.first()
    user_urls = [
        "/jobs/", f"/jobs/{job.pk}/", f"/jobs/{job.pk}/progress/", f"/jobs/review/?job={job.pk}", "/jobs/review/",
        "/agents/", f"/agents/{agent_id}/", "/documents/",
        f"/api/jobs/{job.pk}", "/api/jobs", f"/api/completions?job={job.pk}",
    ]  # fmt: skip
    if completion is not None:
        user_urls.append(f"/jobs/completions/{completion.pk}/")
    admin_urls = [
        "/admin/training/trainingjob/", f"/admin/training/trainingjob/{job.pk}/change/",
        "/admin/training/workitem/", "/admin/training/completion/", "/admin/documents/document/",
    ]  # fmt: skip
    seen = {}
    for client, urls in ((alice_client, user_urls), (root_client, admin_urls)):
        for url in urls:
            response = client.get(url)
            assert response.status_code == 200, url
            seen[url] = response.content.decode()
    return seen


def log_text(caplog: pytest.LogCaptureFixture) -> str:
    records = [f"{r.name} {r.getMessage()} {r.__dict__!r}" for r in caplog.records]
    return caplog.text + "\n".join(records)


def clients(django_user_model: Any) -> tuple[Client, Client]:
    alice = django_user_model.objects.create_user("alice", password="alice-Secret-123")
    root = django_user_model.objects.create_superuser("root", "root@example.com", "root-Secret-123")
    alice_client, root_client = Client(), Client()
    alice_client.force_login(alice)
    root_client.force_login(root)
    return alice_client, root_client


@pytest.mark.django_db(transaction=True)
def test_the_key_is_sent_to_the_model_and_appears_in_no_message_log_or_page(
    key, fake_llm, published, every_log, django_user_model
) -> None:
    alice_client, root_client = clients(django_user_model)
    job = train_from_the_browser(alice_client, published)
    assert job.status == TrainingJob.Status.COMPLETED and job.created_count == 4
    # The key did its job: every model call carried it.
    assert fake_llm.calls and {call["bearer"] for call in fake_llm.calls} == {key}
    # The tasks that ran were real published messages: ingest, prepare, generate.
    tasks = {message["task"] for message in published}
    assert {"documents.tasks.ingest_document_task", "training.tasks.job_prepare_task",
            "training.tasks.generate_task"} <= tasks  # fmt: skip
    assert leaks(json.dumps(published, default=repr)) == []
    assert any(record.name.startswith(("openai", "httpx", "httpcore")) for record in every_log.records)
    assert leaks(log_text(every_log)) == []
    for url, body in pages_seen(alice_client, root_client, job).items():
        assert leaks(body) == [], url


@pytest.mark.django_db(transaction=True)
def test_a_refused_key_fails_the_job_with_a_reason_that_does_not_repeat_it(
    key, fake_llm, published, every_log, django_user_model
) -> None:
    # As OpenAI answers: the key in full, or partly masked.
    masked = f"{key[:12]}{'*' * 20}{key[-4:]}"
    message = f"Incorrect API key provided: {{api_key}} (also known as {masked}). Find your API key in settings."
    fake_llm.set_default([{"kind": "http_error", "status": 401, "message": message}])
    alice_client, root_client = clients(django_user_model)
    job = train_from_the_browser(alice_client, published)
    assert job.status == TrainingJob.Status.FAILED
    assert job.error.startswith("Model server rejected the API key (401): Incorrect API key provided: ***")
    assert len(fake_llm.calls) == 1 and fake_llm.calls[0]["bearer"] == key
    stored = [job.error, *WorkItem.objects.filter(job=job).values_list("error", flat=True)]
    assert all(error and leaks(error) == [] for error in stored)
    assert leaks(json.dumps(published, default=repr)) == []
    assert leaks(log_text(every_log)) == []
    pages = pages_seen(alice_client, root_client, job)
    assert "rejected the API key" in pages[f"/jobs/{job.pk}/"]
    for url, body in pages.items():
        assert leaks(body) == [], url


# --- Django's debug page (DEBUG on: the default stack) ---------------------------------------------


def test_the_debug_page_hides_the_key_among_the_settings(settings) -> None:
    settings.MASSCER_LLM_API_KEY = KEY
    assert SafeExceptionReporterFilter().get_safe_settings()["MASSCER_LLM_API_KEY"] == "********************"
    try:
        raise RuntimeError("boom")
    except RuntimeError:
        page = technical_500_response(RequestFactory().get("/jobs/"), *sys.exc_info()).content.decode()
    assert "MASSCER_LLM_API_KEY" in page  # the settings are listed ...
    assert leaks(page) == []  # ... with the key masked


def test_the_debug_page_of_a_failed_model_call_does_not_show_the_key(fake_llm, settings) -> None:
    # The traceback's frames (ours and the openai SDK's) are listed with their local variables.
    settings.MASSCER_LLM_API_KEY = KEY
    fake_llm.set_default([{"kind": "http_error", "status": 401, "message": "Incorrect API key provided: {api_key}"}])
    try:
        llm.generate_pairs(llm_config(), source="The Gold plan includes two services a year.", count=1)
    except llm.LLMPermanentError:
        page = technical_500_response(RequestFactory().get("/jobs/"), *sys.exc_info()).content.decode()
    else:
        pytest.fail("the call should have been refused")
    assert "AuthenticationError" in page  # the SDK's frames are on the page
    assert leaks(page) == []
