"""/healthz and /readyz: JSON, no login, a quick 503 naming what is down, 200 again once it is back."""
from __future__ import annotations

import os
import shutil
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from django.db import connection
from django.db.migrations.loader import MigrationLoader
from django.db.migrations.recorder import MigrationRecorder

from masscer import health
from testing.processes import free_port, start_redis, stop_process

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def fresh_model_check(settings: Any) -> Iterator[None]:
    """Each test starts without a remembered model check, with short time bounds."""
    settings.MASSCER_HEALTH_TIMEOUT = 1.0
    health._model_seen.clear()
    yield
    health._model_seen.clear()


@pytest.fixture
def ready(settings: Any, fake_llm: Any) -> Any:
    """Everything up: the test database, the in-memory broker and the fake model."""
    settings.CELERY_BROKER_URL = "memory://"
    return fake_llm


def require_redis_server() -> None:
    if shutil.which("redis-server") is None:
        if os.environ.get("CI"):
            pytest.fail("redis-server is not installed and CI is set")
        pytest.skip("redis-server is not installed")


def readyz(client: Any) -> tuple[int, dict[str, Any], float]:
    started = time.monotonic()
    response = client.get("/readyz")
    return response.status_code, response.json(), time.monotonic() - started


def failing(body: dict[str, Any]) -> list[str]:
    return sorted(name for name, check in body["checks"].items() if not check["ok"])


def test_healthz_answers_anyone_with_json(client) -> None:
    response = client.get("/healthz")
    assert response.status_code == 200
    assert response.json() == {"status": "ok"}
    assert response["Content-Type"] == "application/json"


def test_probes_are_answered_for_any_host_and_over_plain_http(client, settings, ready) -> None:
    """Compose and Kubernetes probe the container's own address over http: no 400, no redirect."""
    settings.ALLOWED_HOSTS = ["masscer.example.com"]
    settings.SECURE_SSL_REDIRECT = True
    assert client.get("/healthz", HTTP_HOST="10.0.0.7:8000").status_code == 200
    assert client.get("/readyz", HTTP_HOST="10.0.0.7:8000").status_code == 200
    # Other pages keep both rules.
    assert client.get("/documents/", HTTP_HOST="10.0.0.7:8000").status_code == 400
    assert client.get("/documents/", HTTP_HOST="masscer.example.com").status_code == 301


def test_readyz_is_ok_when_everything_answers(client, ready) -> None:
    status, body, _ = readyz(client)
    assert status == 200, body
    assert body["status"] == "ok"
    assert set(body["checks"]) == {"database", "migrations", "broker", "model"}
    assert all(check["ok"] and check["ms"] >= 0 for check in body["checks"].values())


def test_readyz_fails_with_the_broker_down_and_recovers_when_it_is_back(client, settings, ready, tmp_path) -> None:
    require_redis_server()
    port = free_port()
    settings.CELERY_BROKER_URL = f"redis://127.0.0.1:{port}/0"
    broker = start_redis(port, workdir=tmp_path)
    try:
        status, body, _ = readyz(client)
        assert status == 200, body

        stop_process(broker)
        status, body, took = readyz(client)
        assert status == 503
        assert body["status"] == "fail" and failing(body) == ["broker"], body
        assert str(port) in body["checks"]["broker"]["error"]
        assert took < 3 * settings.MASSCER_HEALTH_TIMEOUT

        broker = start_redis(port, workdir=tmp_path)
        status, body, _ = readyz(client)
        assert status == 200, body
    finally:
        stop_process(broker)


def test_a_hanging_broker_makes_a_quick_503_not_a_hung_probe(client, settings, ready) -> None:
    """A broker that accepts connections and never answers (a stuck Redis, a black hole)."""
    settings.MASSCER_HEALTH_TIMEOUT = 0.5
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(16)
        settings.CELERY_BROKER_URL = f"redis://127.0.0.1:{silent.getsockname()[1]}/0"
        status, body, took = readyz(client)
    assert status == 503 and failing(body) == ["broker"], body
    assert took < 2.5, took


def test_readyz_fails_while_the_model_endpoint_is_away(client, settings, ready) -> None:
    settings.MASSCER_LLM_BASE_URL = f"http://127.0.0.1:{free_port()}/v1"
    status, body, _ = readyz(client)
    assert status == 503 and failing(body) == ["model"], body
    assert "unreachable" in body["checks"]["model"]["error"].lower()


def test_the_model_check_is_remembered_for_a_few_seconds(client, settings, ready) -> None:
    settings.MASSCER_HEALTH_MODEL_CACHE_SECONDS = 60
    assert readyz(client)[0] == 200
    ready.stop()  # the model goes away: probes within the minute do not ask it again
    assert readyz(client)[0] == 200
    settings.MASSCER_HEALTH_MODEL_CACHE_SECONDS = 0
    status, body, _ = readyz(client)
    assert status == 503 and failing(body) == ["model"], body


def test_a_model_the_endpoint_does_not_offer_is_not_ready(client, settings, ready) -> None:
    settings.MASSCER_LLM_MODEL = "gpt-nonexistent"
    status, body, _ = readyz(client)
    assert status == 503 and failing(body) == ["model"], body
    assert "gpt-nonexistent" in body["checks"]["model"]["error"]


@pytest.mark.django_db(transaction=True)
def test_readyz_fails_until_every_migration_is_applied(client, ready) -> None:
    """As after deploying code whose newest migration has not been run yet."""
    (app, newest), *_ = MigrationLoader(connection).graph.leaf_nodes("training")
    recorder = MigrationRecorder(connection)
    recorder.record_unapplied(app, newest)
    try:
        status, body, _ = readyz(client)
        assert status == 503 and failing(body) == ["migrations"], body
        assert f"training.{newest}" in body["checks"]["migrations"]["error"]
    finally:
        recorder.record_applied(app, newest)
    assert readyz(client)[0] == 200


def test_readyz_with_an_unreachable_database_names_it(client, monkeypatch, ready) -> None:
    def refused() -> None:
        raise ConnectionRefusedError("connection to the database server refused")

    monkeypatch.setitem(health.CHECKS, "database", refused)
    status, body, _ = readyz(client)
    assert status == 503 and failing(body) == ["database"]
    assert body["checks"]["database"]["error"] == "connection to the database server refused"


def test_the_probes_take_get_only(client) -> None:
    assert client.post("/healthz").status_code == 405
    assert client.post("/readyz").status_code == 405


def test_the_broker_check_of_the_filesystem_transport_needs_its_folder(settings, tmp_path: Path) -> None:
    settings.CELERY_BROKER_URL = "filesystem://"
    settings.CELERY_BROKER_TRANSPORT_OPTIONS = {"data_folder_in": str(tmp_path / "queue")}
    with pytest.raises(RuntimeError, match="missing or not writable"):
        health.check_broker()
    (tmp_path / "queue").mkdir()
    health.check_broker()
