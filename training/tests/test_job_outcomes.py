"""Honest job outcomes: a completed job says whether it made all, some or none of what was asked,
shows a few of the model's rejected replies, and says what to do when the model fell short.

alice owns the jobs, bob is her teammate, charlie is an outsider.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from django.test import Client
from django.utils.html import escape

from conversations.models import Conversation
from conversations.services import conversations_import
from testing.members import add_member
from training.models import TrainingJob, WorkItem
from training.review import completions_regenerate
from training.services import job_create, job_summary
from training.validation import REASON_LABELS, add_samples, next_step, pick_samples, shorten
from workspaces.services import workspace_personal

from .test_batch import new_batch_job, run_batch_job
from .test_generation import new_job, run_job

pytestmark = pytest.mark.django_db
SAMPLES = Path(__file__).resolve().parents[2].parent / "shared" / "samples" / "conversations"
SCRIPT = '<script>alert("pwned")</script>'


@pytest.fixture(autouse=True)
def fast_passwords(settings: Any) -> None:
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


@pytest.fixture
def bob_on_alices_team(alice: Any, bob: Any) -> Any:
    add_member(actor=alice, workspace=workspace_personal(user=alice), user=bob, role="member")
    return bob


def page(user: Any, url: str) -> str:
    client = Client()
    client.force_login(user)
    response = client.get(url)
    assert response.status_code == 200
    return response.content.decode()


def api_job(user: Any, job: TrainingJob) -> Any:
    client = Client()
    client.force_login(user)
    return client.get(f"/api/jobs/{job.pk}")


def imported(owner: Any, name: str) -> list[Conversation]:
    path = SAMPLES / name
    report = conversations_import(owner=owner, data=path.read_bytes(), filename=path.name)
    return list(Conversation.objects.filter(pk__in=[c.id for c in report.imported]).order_by("pk"))


# --- the outcome, derived in one place -------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "created", "outcome", "label"),
    [
        ("completed", 5, "completed", "Completed"),
        ("completed", 6, "completed", "Completed"),
        ("completed", 2, "completed_with_shortfall", "Completed with shortfall"),
        ("completed", 0, "no_completions", "No completions made"),
        ("failed", 0, "failed", "Failed"),
        ("generating", 0, "generating", "Generating"),
        ("cancelled", 2, "cancelled", "Cancelled"),
    ],
)
def test_a_jobs_outcome_tells_a_completed_job_by_what_it_made(status, created, outcome, label) -> None:
    job = TrainingJob(requested_count=5, created_count=created, status=status)
    assert (job.outcome, job.outcome_label) == (outcome, label)


# --- a model whose evidence is never in the text ----------------------------------------------------


@pytest.fixture
def empty_job(alice: Any, agent: Any, ready_document: Any, fake_llm: Any) -> TrainingJob:
    """alice's job of 4 against a model that invents every evidence quote."""
    fake_llm.set_default([{"kind": "bad_evidence"}])
    job = new_job(alice, ready_document(alice, pages=1), agent, 4)
    run_job(job)
    assert job.status == TrainingJob.Status.COMPLETED and job.created_count == 0
    return job


def test_a_job_that_made_nothing_says_so_on_its_page_with_a_next_step(alice, empty_job) -> None:
    body = page(alice, f"/jobs/{empty_job.pk}/")
    assert 'data-outcome="no_completions"' in body
    assert '<span class="badge badge-no_completions">No completions made</span>' in body
    assert 'class="badge badge-completed"' not in body and "all 0 completions" not in body
    assert "No completions made:</strong> 0 of the 4 asked for." in body
    assert "the evidence quote was not found in the source" in body
    assert "Next step:</strong> The model returned no pair whose evidence is in the text" in body
    assert "MASSCER_LLM_MODEL" in body and "Point it at another model" in body


def test_the_live_progress_fragment_shows_the_same_outcome(alice, empty_job) -> None:
    body = page(alice, f"/jobs/{empty_job.pk}/progress/")
    assert "badge-no_completions" in body and "hx-trigger" not in body


def test_the_job_list_shows_no_completions_made_in_red(alice, empty_job) -> None:
    body = page(alice, "/jobs/")
    assert f'<tr id="job-{empty_job.pk}" data-outcome="no_completions">' in body
    assert '<span class="badge badge-no_completions">No completions made</span>' in body


def test_bob_sees_the_outcome_and_the_rejected_replies_of_alices_job(bob_on_alices_team, empty_job) -> None:
    body = page(bob_on_alices_team, f"/jobs/{empty_job.pk}/")
    assert "No completions made" in body
    assert 'data-sample="evidence_not_found"' in body


def test_charlie_sees_neither_the_page_nor_the_api_outcome(charlie, empty_job) -> None:
    client = Client()
    client.force_login(charlie)
    assert client.get(f"/jobs/{empty_job.pk}/").status_code == 404
    assert api_job(charlie, empty_job).status_code == 404


def test_the_api_gives_the_outcome_next_to_the_unchanged_status(bob_on_alices_team, empty_job) -> None:
    body = api_job(bob_on_alices_team, empty_job).json()
    assert body["status"] == "completed"
    assert body["outcome"] == "no_completions" and body["outcome_label"] == "No completions made"
    assert body["next_step"].startswith("The model returned no pair whose evidence is in the text")


def test_the_job_page_shows_a_rejected_reply_with_its_reason(alice, empty_job) -> None:
    item = WorkItem.objects.get(job=empty_job)
    assert 1 <= len(item.samples) <= 3
    assert {sample["reason"] for sample in item.samples} == {"evidence_not_found"}
    assert all(sample["text"].startswith("Q: ") and " E: " in sample["text"] for sample in item.samples)
    body = page(alice, f"/jobs/{empty_job.pk}/")
    assert "Rejected model output" in body
    assert f"<strong>Why:</strong> {REASON_LABELS['evidence_not_found']}" in body
    first = item.samples[0]["text"]
    assert first[:60] in body


# --- a partial shortfall ---------------------------------------------------------------------------


def test_a_job_that_made_some_shows_completed_with_shortfall(alice, agent, ready_document, fake_llm) -> None:
    fake_llm.script([{"kind": "short", "n": 2}])
    fake_llm.set_default([{"kind": "bad_evidence"}])
    job = new_job(alice, ready_document(alice, pages=1), agent, 6)
    run_job(job)
    assert job.status == TrainingJob.Status.COMPLETED and job.created_count == 2 and job.shortfall == 4
    assert job.outcome == "completed_with_shortfall"
    assert job.shortfall_reasons["model_returned_fewer"] == 4  # the first reply held 2 of 6
    detail = page(alice, f"/jobs/{job.pk}/")
    assert '<span class="badge badge-completed_with_shortfall">Completed with shortfall</span>' in detail
    assert "4 short:</strong> made 2 of 6" in detail
    assert "Next step:</strong> " + escape("Most of the model's evidence quotes were not found in the text") in detail
    listing = page(alice, "/jobs/")
    assert 'data-outcome="completed_with_shortfall"' in listing and "4 short" in listing
    assert api_job(alice, job).json()["outcome"] == "completed_with_shortfall"


def test_a_job_that_made_everything_stays_green_without_a_next_step(alice, agent, ready_document, fake_llm) -> None:
    job = new_job(alice, ready_document(alice, pages=1), agent, 3)
    run_job(job)
    assert job.outcome == "completed" and job.next_step is None
    body = page(alice, f"/jobs/{job.pk}/")
    assert '<span class="badge badge-completed">Completed</span>' in body
    assert "Next step" not in body and "Rejected model output" not in body
    summary = job_summary(job)
    assert summary["outcome"] == "completed" and summary["next_step"] is None


# --- model output is data: escaped when shown --------------------------------------------------------


def test_a_reply_with_a_script_is_shown_escaped(alice, agent, ready_document, fake_llm) -> None:
    fake_llm.set_default([{"kind": "raw", "text": f"Sorry, I cannot. {SCRIPT} " + "padding " * 80}])
    job = new_job(alice, ready_document(alice, pages=1), agent, 3)
    run_job(job)
    assert job.outcome == "no_completions"
    item = WorkItem.objects.get(job=job)
    # Three identical unparseable replies are kept once, shortened.
    assert [sample["reason"] for sample in item.samples] == ["invalid_output"]
    assert len(item.samples[0]["text"]) <= 300 and item.samples[0]["text"].endswith("…")
    body = page(alice, f"/jobs/{job.pk}/")
    assert SCRIPT not in body
    assert "&lt;script&gt;alert(&quot;pwned&quot;)&lt;/script&gt;" in body
    assert f"<strong>Why:</strong> {escape(REASON_LABELS['invalid_output'])}" in body
    assert "Next step:</strong> The model&#x27;s replies could not be parsed" in body


def test_batch_mode_keeps_rejected_replies_too(alice, agent, ready_document, fake_llm) -> None:
    fake_llm.set_default([{"kind": "bad_evidence", "endpoint": "batch"}])
    job = new_batch_job(alice, ready_document(alice, pages=1), agent, 3)
    run_batch_job(job)
    assert job.status == TrainingJob.Status.COMPLETED and job.outcome == "no_completions"
    samples = WorkItem.objects.get(job=job).samples
    assert samples and {sample["reason"] for sample in samples} == {"evidence_not_found"}
    assert "badge-no_completions" in page(alice, f"/jobs/{job.pk}/")


def test_a_retry_starts_the_samples_afresh(alice, agent, ready_document, fake_llm) -> None:
    from training.services import job_retry

    fake_llm.set_default([{"kind": "bad_evidence"}])
    job = new_job(alice, ready_document(alice, pages=1), agent, 2)
    run_job(job)
    assert WorkItem.objects.get(job=job).samples
    fake_llm.set_default(None)
    assert job_retry(actor=alice, job=job)
    run_job(job)
    assert job.outcome == "completed"
    assert WorkItem.objects.get(job=job).samples == []


# --- mining: a short reply is the model's, unless the conversation has no more questions -------------


def test_a_mine_job_blames_the_model_when_the_conversation_holds_enough_questions(alice, agent, fake_llm) -> None:
    conversations = imported(alice, "sharegpt.json")
    # sg-1 asks two questions (one chunk, quota 2); the model returns one of them.
    fake_llm.script([{"kind": "short", "n": 1, "match": "Can I cancel it?"}])
    job = job_create(owner=alice, count=3, agents=[agent], conversations=conversations, style="mine")
    run_job(job)
    assert job.status == TrainingJob.Status.COMPLETED and job.created_count == 2
    assert job.shortfall_reasons == {"model_returned_fewer": 1}
    assert "source_exhausted" not in job.shortfall_reasons
    assert "the model returned fewer pairs than asked (1×)" in job.error
    # Asked once: a miner that said it found no more is not asked again (bounded, no invented questions).
    short_item = WorkItem.objects.get(job=job, quota=2)
    assert short_item.calls == 1 and short_item.made == 1
    assert job.outcome == "completed_with_shortfall"
    assert job.next_step and job.next_step.startswith("The model returned fewer pairs than asked")


def test_a_mine_job_still_says_when_the_conversation_has_no_more_questions(alice, agent, fake_llm) -> None:
    conversations = imported(alice, "sharegpt.json")
    job = job_create(owner=alice, count=3, agents=[agent], conversations=conversations, style="mine")
    run_job(job)
    assert job.created_count == 3
    # A reviewer regenerates one: its chunk is asked for a question beyond the ones it holds.
    rejected = job.completions.order_by("pk").first()
    completions_regenerate(completions=job.completions.filter(pk=rejected.pk), reviewer=alice)
    fake_llm.script([{"kind": "short", "n": 0}])
    run_job(job)
    item = WorkItem.objects.get(job=job, chunk=rejected.chunk)
    assert item.reasons == {"source_exhausted": 1}
    assert job.next_step is None  # nothing the model could do better


# --- the pure parts -----------------------------------------------------------------------------------


def test_samples_keep_three_with_one_of_each_reason_first() -> None:
    kept = add_samples([], [("duplicate", "a"), ("duplicate", "b"), ("duplicate", "a"), ("empty_field", "c")])
    assert kept == [
        {"reason": "duplicate", "text": "a"},
        {"reason": "empty_field", "text": "c"},
        {"reason": "duplicate", "text": "b"},
    ]
    assert add_samples(kept, [("truncated", "d")]) is None  # full: nothing to write
    assert add_samples([], []) is None
    picked = pick_samples([[{"reason": "duplicate", "text": "a"}] * 2, [{"reason": "truncated", "text": "x"}]], 2)
    assert [s["reason"] for s in picked] == ["duplicate", "truncated"]


def test_shorten_cuts_long_text_at_either_end() -> None:
    text = "word " * 100
    assert len(shorten(text)) == 300 and shorten(text).endswith("…")
    assert shorten(text, 20, keep_end=True).startswith("…") and len(shorten(text, 20, keep_end=True)) == 20
    assert shorten("  a\n\n b  ") == "a b"


@pytest.mark.parametrize(
    ("reasons", "created", "expected"),
    [
        ({"evidence_not_found": 9, "calls_exhausted": 1}, 0, "The model returned no pair whose evidence is in"),
        ({"invalid_output": 3, "calls_exhausted": 1}, 0, "The model's replies could not be parsed"),
        ({"truncated": 2}, 1, "Some of the model's replies were cut off at the token limit — raise the job's max"),
        ({"calls_exhausted": 1}, 0, "The model did not deliver a valid pair within the allowed calls"),
        ({"source_exhausted": 7}, 3, None),
        ({"budget_exhausted": 1, "evidence_not_found": 4}, 1, None),
        ({"evidence_not_found": 4}, 10, None),  # nothing missing
    ],
)
def test_the_next_step_names_the_models_main_failing(reasons, created, expected) -> None:
    step = next_step(reasons, created=created, requested=10)
    if expected is None:
        assert step is None
    else:
        assert step is not None and step.startswith(expected)
        assert "stronger model" in step and "Point it at another model" in step
