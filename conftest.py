"""Project-wide test fixtures: named users, the fake model server, settings for tests."""
from __future__ import annotations

import atexit
import os
import shutil
import tempfile
from collections.abc import Iterator
from typing import Any

import pytest

# Unit tests never touch a real broker: Celery reads CELERY_BROKER_URL from the environment
# itself, so messages go to memory and nothing runs unless a test drives it (run_job) or
# asks for eager tasks (masscer.tests.web.eager_celery). Django's settings are already
# loaded when this runs, so settings-level switches belong in fixtures, not here.
# The integration tests start real workers in subprocesses with their own broker URL.
os.environ.setdefault("CELERY_BROKER_URL", "memory://")
# The model-call counters (masscer.metrics) of this run and of the workers it starts (they
# inherit the environment) go to a folder of their own, not to the development stack's.
os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="masscer-metrics-")
atexit.register(shutil.rmtree, os.environ["PROMETHEUS_MULTIPROC_DIR"], ignore_errors=True)


@pytest.fixture
def alice(django_user_model: Any) -> Any:
    return django_user_model.objects.create_user("alice", password="alice-Secret-123")


@pytest.fixture
def bob(django_user_model: Any) -> Any:
    return django_user_model.objects.create_user("bob", password="bob-Secret-123")


@pytest.fixture
def charlie(django_user_model: Any) -> Any:
    return django_user_model.objects.create_user("charlie", password="charlie-Secret-123")


@pytest.fixture
def agent(alice: Any) -> Any:
    """alice's support agent, in her personal workspace."""
    from agents.models import Agent
    from workspaces.services import workspace_personal

    return Agent.objects.create(
        owner=alice,
        workspace=workspace_personal(user=alice),
        name="Support",
        slug="support",
        system_prompt="You help customers.",
    )


@pytest.fixture
def fake_llm(settings: Any) -> Iterator[Any]:
    """A fake OpenAI-compatible server on loopback, wired into the settings."""
    from testing.fakellm import FakeLLMServer

    with FakeLLMServer() as server:
        settings.MASSCER_LLM_BASE_URL = server.base_url
        settings.MASSCER_LLM_API_KEY = "sk-test-secret-key"
        settings.MASSCER_LLM_MODEL = "fake-model"
        settings.MASSCER_LLM_MODE = "chat"
        settings.MASSCER_LLM_TIMEOUT = 5.0
        yield server
