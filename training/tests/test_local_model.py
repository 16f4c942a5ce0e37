"""A small job against the real embedded local model (gemma-3-270m in llama-cpp-python's server)."""

from __future__ import annotations

import socket
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest

from documents.models import Document, Page
from masscer.localmodel import MODEL_ALIAS, server_command
from masscer.testing.processes import ROOT, stop_process
from training.models import Completion, TrainingJob
from training.validation import evidence_in_source

from .test_generation import new_job, run_job

pytestmark = [pytest.mark.localmodel, pytest.mark.django_db]

TEXT = (
    "The Eiffel Tower was completed in 1889. It is 330 metres tall. "
    "The tower was built by the company of Gustave Eiffel for the World's Fair in Paris. "
    "It was the tallest man-made structure in the world until 1930. "
    "Millions of tourists visit the tower every year."
)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="module")
def local_model() -> Iterator[str]:
    port = free_port()
    process = subprocess.Popen(
        server_command(port, n_ctx=2048),
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    base_url = f"http://127.0.0.1:{port}/v1"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            urllib.request.urlopen(base_url + "/models", timeout=2).read()
            break
        except OSError:
            if process.poll() is not None:
                pytest.fail("the local model server exited during start-up")
            time.sleep(0.5)
    else:
        stop_process(process)
        pytest.fail("the local model server did not start within 120 s")
    yield base_url
    stop_process(process)


def test_a_small_job_on_the_local_model_terminates_with_only_valid_completions(
    local_model: str, alice: Any, agent: Any, settings: Any
) -> None:
    settings.MASSCER_LLM_BASE_URL = local_model
    settings.MASSCER_LLM_MODEL = MODEL_ALIAS
    settings.MASSCER_LLM_MODE = "completion"
    settings.MASSCER_LLM_TIMEOUT = 120
    document = Document.objects.create(
        owner=alice,
        workspace=agent.workspace,
        title="Eiffel",
        filename="eiffel.md",
        file="documents/e.md",
        sha256="0" * 64,
        status=Document.Status.READY,
        page_count=1,
    )
    Page.objects.create(document=document, number=1, text=TEXT)
    job = new_job(alice, document, agent, 2, temperature=0.2)
    started = time.monotonic()
    run_job(job, rounds=3)
    assert job.status in (TrainingJob.Status.COMPLETED, TrainingJob.Status.FAILED)
    assert time.monotonic() - started < 300
    assert 1 <= job.calls <= 3  # bounded: one batch, at most three tries
    completions = list(Completion.objects.filter(job=job).select_related("chunk"))
    assert len(completions) + job.shortfall == 2
    for completion in completions:
        assert completion.question and completion.answer
        assert evidence_in_source(completion.evidence, completion.chunk.text)
