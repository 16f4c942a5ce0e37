"""`manage.py train --estimate` tells the cost before anything runs."""
from __future__ import annotations

import json
from io import StringIO
from pathlib import Path

import pytest
from django.core.management import call_command

from documents.models import Document
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
