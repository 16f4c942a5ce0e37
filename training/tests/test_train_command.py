"""`manage.py train --estimate` tells the cost before anything runs."""
from __future__ import annotations

import json
from io import StringIO
from pathlib import Path
from typing import Any

import pytest
from django.core.management import call_command

from documents.models import Document
from masscer.tests.web import eager_celery  # noqa: F401 - fixture
from training.models import TrainingJob

pytestmark = pytest.mark.django_db
SAMPLES = Path(__file__).resolve().parents[2].parent / "shared" / "samples"


def test_estimate_prints_calls_tokens_and_cost_and_creates_nothing(settings) -> None:
    settings.MASSCER_LLM_PRICES = "priced-model=1:2"
    out = StringIO()
    call_command(
        "train", str(SAMPLES / "pdf" / "pdflatex-4-pages.pdf"), "--count", "12", "--agent", "support",
        "--model", "priced-model", "--estimate", "--json", stdout=out,
    )  # fmt: skip
    summary = json.loads(out.getvalue())
    assert summary["chunks_total"] == 5 and summary["model_calls"] == 5
    assert summary["prompt_tokens"] > 3000
    expected = (summary["prompt_tokens"] * 1 + summary["completion_tokens"] * 2) / 1_000_000
    assert summary["cost"] == pytest.approx(expected)
    assert not Document.objects.exists() and not TrainingJob.objects.exists()


def test_estimate_for_mining_is_capped_by_the_questions_asked() -> None:
    out = StringIO()
    call_command(
        "train", str(SAMPLES / "conversations" / "sharegpt.json"), "-n", "10", "--agent", "a",
        "--style", "mine", "--estimate", stdout=out,
    )  # fmt: skip
    assert "the sources give at most 3" in out.getvalue()
    assert "no price set" in out.getvalue()


# --- following a job to its end (tasks run inline, against the fake model) ---------------------------


@pytest.fixture
def notes(tmp_path: Path, settings: Any) -> Path:
    settings.MEDIA_ROOT = tmp_path / "media"
    path = tmp_path / "notes.txt"
    path.write_text(
        "The Gold service plan includes two full services a year and free brake pads. "
        "It costs 149 euros per year. You can cancel within 14 days for a full refund.\n"
    )
    return path


def train(path: Path, *args: str) -> tuple[int, str]:
    """Run `train` as alice the way a shell would: the exit code and what it printed."""
    out = StringIO()
    try:
        call_command("train", str(path), "--user", "alice", "--agent", "support", *args, stdout=out, stderr=StringIO())
    except SystemExit as exc:
        return int(exc.code or 0), out.getvalue()
    return 0, out.getvalue()


@pytest.mark.django_db(transaction=True)
@pytest.mark.usefixtures("eager_celery")
def test_train_exits_1_when_the_model_made_no_completions(alice, notes, fake_llm) -> None:
    fake_llm.set_default([{"kind": "bad_evidence"}])
    code, printed = train(notes, "-n", "3", "--json")
    summary = json.loads(printed.strip().splitlines()[-1])
    assert code == 1
    assert summary["status"] == "completed" and summary["completions_created"] == 0
    assert summary["outcome"] == "no_completions" and summary["outcome_label"] == "No completions made"
    assert summary["next_step"].startswith("The model returned no pair whose evidence is in the text")


@pytest.mark.django_db(transaction=True)
@pytest.mark.usefixtures("eager_celery")
def test_train_says_the_outcome_and_the_next_step_in_its_summary(alice, notes, fake_llm) -> None:
    fake_llm.set_default([{"kind": "bad_evidence"}])
    code, printed = train(notes, "-n", "3")
    assert code == 1
    assert printed.startswith(f"Job {TrainingJob.objects.get().pk}: No completions made\n")
    assert "  completions: 0 of 3" in printed and "  next step: The model returned no pair" in printed


@pytest.mark.django_db(transaction=True)
@pytest.mark.usefixtures("eager_celery")
def test_train_exits_0_for_a_shortfall_and_says_so(alice, notes, fake_llm) -> None:
    fake_llm.script([{"kind": "short", "n": 1}])
    fake_llm.set_default([{"kind": "bad_evidence"}])
    code, printed = train(notes, "-n", "3", "--json")
    summary = json.loads(printed.strip().splitlines()[-1])
    assert code == 0
    assert summary["outcome"] == "completed_with_shortfall" and summary["completions_created"] == 1


@pytest.mark.django_db(transaction=True)
@pytest.mark.usefixtures("eager_celery")
def test_train_exits_0_when_every_completion_was_made(alice, notes, fake_llm) -> None:
    code, printed = train(notes, "-n", "2")
    assert code == 0 and printed.startswith(f"Job {TrainingJob.objects.get().pk}: Completed\n")
