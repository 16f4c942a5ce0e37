"""A new user's first job, against the real embedded model (Qwen2.5-Coder-1.5B-Instruct in
llama.cpp's server from the xllamacpp wheel), on the product's own defaults.

The one test that is about the embedded model: it would have caught the release where the
default model made 0 of 41 completions under a green "Completed". It runs once in CI, on
SQLite (`-m "not localmodel"` keeps it out of the PostgreSQL run).
"""

from __future__ import annotations

import io
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from documents.services import document_create, document_extract
from masscer import localmodel
from testing.embedded import HANDBOOK, ModelStartError, start_embedded_model
from testing.processes import stop_process
from training.models import Completion, TrainingJob
from training.validation import evidence_in_source

from .test_generation import new_job, run_job

pytestmark = [pytest.mark.localmodel, pytest.mark.django_db]


@pytest.fixture(scope="module")
def embedded_model(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """`python -m masscer.localmodel` as `make run` starts it, on a free port."""
    try:
        process, url = start_embedded_model(tmp_path_factory.mktemp("model") / "model.log")
    except ModelStartError as exc:
        pytest.fail(str(exc))
    yield url + "/v1"
    stop_process(process)


def test_a_first_job_on_the_embedded_model_makes_exactly_n_grounded_completions(
    embedded_model: str, alice: Any, agent: Any, settings: Any, tmp_path: Path
) -> None:
    # Only the port differs from what `make run` gives a new user: model, chat mode with a
    # JSON schema, temperature and timeout are the settings' defaults for the embedded model.
    settings.MASSCER_LLM_BASE_URL = embedded_model
    settings.MEDIA_ROOT = str(tmp_path)
    assert settings.MASSCER_LLM_MODEL == localmodel.MODEL_ALIAS and settings.MASSCER_LLM_MODE == "chat"
    document = document_create(
        owner=alice, fileobj=io.BytesIO(HANDBOOK.encode()), filename="handbook.md", enqueue=False
    )
    document_extract(document_id=document.pk)
    job = new_job(alice, document, agent, 3)

    started = time.monotonic()
    run_job(job, rounds=3)
    elapsed = time.monotonic() - started

    completions = list(Completion.objects.filter(job=job).select_related("chunk"))
    shown = [(c.question, c.answer, c.evidence) for c in completions]
    assert job.status == TrainingJob.Status.COMPLETED, job.error
    assert (job.created_count, job.shortfall, len(completions)) == (3, 0, 3), (job.shortfall_reasons, shown)
    assert job.chunks_total == 1
    for completion in completions:
        assert completion.question.strip() and completion.answer.strip()
        assert evidence_in_source(completion.evidence, completion.chunk.text), shown
    assert len({c.question.strip().lower() for c in completions}) == 3
    assert 1 <= job.calls <= 3 and job.completion_tokens > 0
    assert elapsed < 300, f"3 completions took {elapsed:.0f} s"


def test_a_tampered_model_file_is_refused_with_a_clear_message(tmp_path: Path) -> None:
    parts = localmodel.part_paths()
    fake = tmp_path / "model.gguf"
    fake.write_bytes(b"GGUF" + b"\0" * 60)
    with pytest.raises(localmodel.ModelFileError, match="has 64 bytes, not the 1,117,320,768 of the pinned model"):
        localmodel.check_model_file(fake)
    # The right size but other bytes (the uploader is anonymous: the hash is the trust).
    with fake.open("wb") as out:
        out.truncate(localmodel.MODEL_BYTES)
    with pytest.raises(localmodel.ModelFileError, match="sha256 .* not the pinned"):
        localmodel.check_model_file(fake)
    assert len(parts) == 22 and all(part.is_file() for part in parts)
