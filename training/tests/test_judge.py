"""The judge pass: a second model call scores each accepted pair; low ones are replaced."""
from __future__ import annotations

import json
from decimal import Decimal
from typing import Any

import pytest
from django.core.exceptions import ValidationError
from django.urls import reverse

from agents.models import Agent
from documents.models import Page
from masscer.tests.web import eager_celery  # noqa: F401 - a fixture
from training.estimate import estimate
from training.export import export_lines
from training.forms import TrainForm
from training.models import Completion, TrainingJob, WorkItem
from training.services import job_create

from .factories import make_agent, make_chunk, make_completions, make_document, make_job, numbered
from .test_generation import run_job
from .test_limits_and_cost import limited  # noqa: F401 - a fixture
from .test_train_command import notes, train  # noqa: F401 - notes is a fixture

pytestmark = pytest.mark.django_db

MARKER = "Zebrafiction"


def judge_calls(fake_llm: Any) -> list[dict[str, Any]]:
    return [call for call in fake_llm.calls if call["behaviour"] == "judge" or "<pairs_to_judge>" in call["prompt"]]


def planted_document(ready_document: Any, owner: Any) -> Any:
    """A one-page document whose opening sentence the judge will call unsupported."""
    document = ready_document(owner, pages=1)
    page = Page.objects.get(document=document, number=1)
    page.text = f"The {MARKER} gadget cures every illness overnight. " + page.text
    page.save(update_fields=["text"])
    return document


def new_job(owner: Any, document: Any, agent: Any, count: int, **params: Any) -> TrainingJob:
    return job_create(owner=owner, count=count, agents=[agent], documents=[document], **params)


def test_a_planted_unsupported_pair_is_scored_low_and_replaced(alice, agent, ready_document, fake_llm) -> None:
    fake_llm.set_default([{"kind": "good"}, {"kind": "judge", "low": MARKER}])
    job = new_job(alice, planted_document(ready_document, alice), agent, 6, judge=True)
    run_job(job)
    assert job.status == TrainingJob.Status.COMPLETED
    assert job.created_count == 6 and job.shortfall == 0
    completions = list(Completion.objects.filter(job=job))
    assert len(completions) == 6
    assert all(c.judge is not None and c.judge["faithfulness"] >= job.judge_threshold for c in completions)
    assert all(set(c.judge["reasons"]) == {"faithfulness", "answerability", "usefulness"} for c in completions)
    assert not any(MARKER in f"{c.question} {c.answer} {c.evidence}" for c in completions)
    item = WorkItem.objects.get(job=job)
    assert item.reasons.get("judge_low", 0) >= 1
    assert any(sample["reason"] == "judge_low" and MARKER in sample["text"] for sample in item.samples)
    # One judge call per generation call, all counted on the job.
    judged = judge_calls(fake_llm)
    assert judged and len(fake_llm.calls) == 2 * len(judged) == job.calls


def test_several_pairs_are_judged_in_one_call(alice, agent, ready_document, fake_llm) -> None:
    job = new_job(alice, ready_document(alice, pages=1), agent, 5, judge=True)
    run_job(job)
    assert job.created_count == 5
    (judged,) = judge_calls(fake_llm)
    listed = judged["prompt"].rsplit("<pairs_to_judge>\n", 1)[1].split("\n</pairs_to_judge>")[0]
    assert len(json.loads(listed)) == 5
    assert {c.judge["faithfulness"] for c in Completion.objects.filter(job=job)} == {5}


def test_the_judge_is_told_the_kind_of_pair_it_scores(alice, agent, ready_document, fake_llm) -> None:
    """An unanswerable pair is right to say the source does not answer: the judge must know."""
    job = new_job(
        alice, ready_document(alice, pages=1), agent, 4, judge=True, question_types={"factual": 1, "unanswerable": 1}
    )
    run_job(job)
    assert job.created_count == 4
    prompts = {call["prompt"] for call in judge_calls(fake_llm)}
    told = [prompt for prompt in prompts if "unanswerable on purpose" in prompt]
    assert len(told) == 1 and len(prompts) == 2
    (unanswerable,) = Completion.objects.filter(job=job, question_type="unanswerable")[:1]
    assert unanswerable.question in told[0]


def test_a_raised_threshold_rejects_what_the_default_keeps(alice, agent, ready_document, fake_llm) -> None:
    fake_llm.set_default([{"kind": "good"}, {"kind": "judge", "low": MARKER, "score": 4}])
    document = planted_document(ready_document, alice)
    kept = new_job(alice, document, agent, 3, judge=True)
    run_job(kept)
    assert any(MARKER in c.evidence for c in Completion.objects.filter(job=kept))
    strict = new_job(alice, document, agent, 3, judge=True, judge_threshold=5)
    run_job(strict)
    assert strict.created_count == 3
    assert not any(MARKER in c.evidence for c in Completion.objects.filter(job=strict))


def test_without_the_judge_there_are_no_judge_calls_and_no_scores(alice, agent, ready_document, fake_llm) -> None:
    job = new_job(alice, ready_document(alice, pages=1), agent, 4, judge=False)
    run_job(job)
    assert job.created_count == 4 and not job.judge
    assert judge_calls(fake_llm) == []
    assert list(Completion.objects.filter(job=job).values_list("judge", flat=True)) == [None] * 4


def test_a_failing_judge_call_stores_the_pairs_unjudged(alice, agent, ready_document, fake_llm) -> None:
    fake_llm.script([{"kind": "http_error", "status": 400, "judge": True}])
    job = new_job(alice, ready_document(alice, pages=1), agent, 3, judge=True)
    run_job(job)
    assert job.created_count == 3
    assert list(Completion.objects.filter(job=job).values_list("judge", flat=True)) == [None] * 3


def test_an_unparsable_judge_reply_leaves_the_pairs_unjudged(alice, agent, ready_document, fake_llm) -> None:
    fake_llm.script([{"kind": "invalid_json", "judge": True}])
    job = new_job(alice, ready_document(alice, pages=1), agent, 3, judge=True)
    run_job(job)
    assert job.created_count == 3 and job.calls == 2
    assert list(Completion.objects.filter(job=job).values_list("judge", flat=True)) == [None] * 3


def test_judge_calls_wait_in_the_shared_rate_limit(alice, agent, ready_document, fake_llm, limited) -> None:  # noqa: F811
    limited.MASSCER_LLM_RPM = 120
    limited.MASSCER_PAIRS_PER_CALL = 1
    job = new_job(alice, ready_document(alice, pages=1), agent, 2, judge=True)
    run_job(job)
    starts = sorted(call["started"] for call in fake_llm.calls)
    assert len(starts) == 4 and len(judge_calls(fake_llm)) == 2
    # Four calls, generation and judge alike, 0.5 s apart.
    assert starts[-1] - starts[0] >= 3 * 0.5 - 0.2


def test_the_judge_call_holds_a_call_slot_like_generation(
    alice, agent, ready_document, fake_llm, limited, monkeypatch  # noqa: F811
) -> None:
    from masscer.lib.concurrency import CallSlots

    limited.MASSCER_LLM_MAX_CONCURRENCY = 1
    held_during: list[int] = []
    take = CallSlots.take

    def spy(self: CallSlots, max_wait: float) -> str:
        token = take(self, max_wait)
        held_during.append(len(fake_llm.calls))  # calls made before this slot was taken
        return token

    monkeypatch.setattr(CallSlots, "take", spy)
    job = new_job(alice, ready_document(alice, pages=1), agent, 2, judge=True)
    run_job(job)
    assert job.created_count == 2 and len(judge_calls(fake_llm)) == 1
    assert held_during == [0, 1]  # one slot for the generation call, one for the judge call


def test_judge_calls_count_against_the_budget(alice, agent, ready_document, fake_llm, settings) -> None:
    settings.MASSCER_LLM_PRICES = "fake-model=1000:2000"
    settings.MASSCER_PAIRS_PER_CALL = 2
    job = new_job(alice, ready_document(alice, pages=1), agent, 10, judge=True, budget=Decimal("0.000001"))
    run_job(job)
    assert job.status == TrainingJob.Status.COMPLETED
    # The first generation call already spent the budget: its pairs could not be judged, so none
    # were stored, no judge call was made, and the job says why it stopped.
    assert job.calls == 1 and judge_calls(fake_llm) == []
    assert job.created_count == 0 and job.shortfall == 10
    assert "cost budget" in job.error
    assert WorkItem.objects.get(job=job).reasons.get("judge_unchecked") == 2


def test_the_judges_cost_is_counted_with_the_generation(alice, agent, ready_document, fake_llm, settings) -> None:
    settings.MASSCER_LLM_PRICES = "fake-model=1000:2000"
    job = new_job(alice, ready_document(alice, pages=1), agent, 3, judge=True)
    run_job(job)
    calls = fake_llm.calls
    assert job.calls == len(calls) == 2
    expected = (Decimal(1000) * job.prompt_tokens + Decimal(2000) * job.completion_tokens) / 1_000_000
    assert job.cost == pytest.approx(expected)


def test_batch_mode_takes_the_judge_but_a_completion_endpoint_refuses_it(
    alice, agent, ready_document, settings
) -> None:
    document = ready_document(alice, pages=1)
    assert new_job(alice, document, agent, 3, judge=True, mode=TrainingJob.Mode.BATCH).judge is True
    settings.MASSCER_LLM_MODE = "completion"
    with pytest.raises(ValidationError, match="needs a chat model endpoint"):
        new_job(alice, document, agent, 3, judge=True)


def test_the_threshold_must_be_a_score(alice, agent, ready_document) -> None:
    with pytest.raises(ValidationError, match="between 1 and 5"):
        new_job(alice, ready_document(alice, pages=1), agent, 3, judge=True, judge_threshold=6)


def test_the_default_follows_the_setting_and_the_mode(alice, agent, ready_document, settings) -> None:
    document = ready_document(alice, pages=1)
    settings.MASSCER_JUDGE_DEFAULT = True
    assert new_job(alice, document, agent, 1).judge is True
    assert new_job(alice, document, agent, 1, mode=TrainingJob.Mode.BATCH).judge is True
    settings.MASSCER_JUDGE_DEFAULT = False
    assert new_job(alice, document, agent, 1).judge is False


# --- the doors: API, CLI, Train dialog, export, review queue, admin ------------------------------


def judged_rows(alice: Any) -> tuple[Any, list[Completion]]:
    """Alice's agent with four approved completions: faithfulness 2, 5 and 3, and one not judged."""
    agent = make_agent(alice)
    job = make_job(alice)
    rows = make_completions(job, make_chunk(make_document(alice)), numbered(4), agents=[agent], status="approved")
    for row, score in zip(rows, (2, 5, 3, None), strict=True):
        row.judge = None if score is None else {
            "faithfulness": score, "answerability": 4, "usefulness": 4,
            "reasons": {"faithfulness": f"scored {score}", "answerability": "ok", "usefulness": "ok"},
        }  # fmt: skip
        row.save(update_fields=["judge"])
    return agent, rows


def test_the_api_takes_the_judge_fields_and_shows_the_scores(client, alice, agent, ready_document, fake_llm) -> None:
    client.force_login(alice)
    document = ready_document(alice, pages=1)
    body = {"count": 2, "documents": [document.pk], "agents": [agent.pk], "judge": True, "judge_threshold": 5}
    response = client.post("/api/jobs", json.dumps(body), content_type="application/json")
    assert response.status_code == 201, response.content
    assert response.json()["judge"] is True and response.json()["judge_threshold"] == 5
    run_job(TrainingJob.objects.get(pk=response.json()["job_id"]))
    items = client.get("/api/completions").json()["items"]
    assert len(items) == 2 and all(item["judge"]["faithfulness"] == 5 for item in items)
    bad = client.post("/api/jobs", json.dumps({**body, "judge_threshold": 9}), content_type="application/json")
    assert bad.status_code in (400, 422)


def test_the_api_filters_and_sorts_by_judge_scores(client, alice) -> None:
    _, rows = judged_rows(alice)
    client.force_login(alice)
    below = client.get("/api/completions?judge_below=4").json()["items"]
    assert sorted(item["id"] for item in below) == [rows[0].pk, rows[2].pk]
    ordered = client.get("/api/completions?order=faithfulness").json()["items"]
    assert [item["id"] for item in ordered] == [rows[0].pk, rows[2].pk, rows[1].pk, rows[3].pk]
    unjudged = client.get("/api/completions?judged=false").json()["items"]
    assert [item["id"] for item in unjudged] == [rows[3].pk]
    assert client.get("/api/completions?judge_below=7").status_code in (400, 422)


def test_the_records_export_carries_the_judge(alice) -> None:
    agent, rows = judged_rows(alice)
    lines = [json.loads(line) for line in export_lines(agent=agent, fmt="records")]
    by_id = {line["id"]: line for line in lines}
    assert by_id[rows[0].pk]["judge"]["faithfulness"] == 2
    assert by_id[rows[0].pk]["judge"]["reasons"]["faithfulness"] == "scored 2"
    assert by_id[rows[3].pk]["judge"] is None


def test_the_review_queue_shows_filters_and_sorts_by_scores(client, alice) -> None:
    _, rows = judged_rows(alice)
    client.force_login(alice)
    page = client.get(reverse("training:review") + "?status=approved&judge_below=4").content.decode()
    assert f'id="c-{rows[0].pk}"' in page and f'id="c-{rows[2].pk}"' in page
    assert f'id="c-{rows[1].pk}"' not in page and f'id="c-{rows[3].pk}"' not in page
    assert "faithfulness 2/5" in page and 'title="scored 2"' in page
    page = client.get(reverse("training:review") + "?status=approved&order=faithfulness").content.decode()
    positions = [page.index(f'id="c-{row.pk}"') for row in (rows[0], rows[2], rows[1], rows[3])]
    assert positions == sorted(positions)
    assert client.get(reverse("training:review") + "?status=approved&judge_below=abc").status_code == 200


def test_the_admin_lists_and_filters_by_faithfulness(client, alice, django_user_model) -> None:
    _, rows = judged_rows(alice)
    admin = django_user_model.objects.create_superuser("root", password="root-Secret-123")
    client.force_login(admin)
    page = client.get("/admin/training/completion/?judge_below=3").content.decode()
    assert f"/admin/training/completion/{rows[0].pk}/change/" in page
    assert f"/admin/training/completion/{rows[2].pk}/change/" not in page
    assert client.get("/admin/training/completion/?o=9").status_code == 200


@pytest.mark.django_db(transaction=True)
@pytest.mark.usefixtures("eager_celery")
def test_the_cli_takes_judge_and_its_threshold(alice, notes, fake_llm) -> None:  # noqa: F811
    code, printed = train(notes, "-n", "2", "--judge", "--judge-threshold", "3", "--json")
    summary = json.loads(printed.strip().splitlines()[-1])
    assert code == 0 and summary["judge"] is True and summary["judge_threshold"] == 3
    assert summary["model_calls"] == 2 == len(fake_llm.calls)
    assert all(c.judge is not None for c in Completion.objects.all())
    code, printed = train(notes, "-n", "2", "--no-judge", "--json")
    assert json.loads(printed.strip().splitlines()[-1])["judge"] is False


@pytest.mark.django_db(transaction=True)
@pytest.mark.usefixtures("eager_celery")
def test_the_cli_estimates_a_judged_batch_job_with_its_judge_calls(alice, notes, fake_llm) -> None:  # noqa: F811
    def estimated(*extra: str) -> dict[str, Any]:
        code, printed = train(notes, "-n", "4", "--batch", "--estimate", "--json", *extra)
        assert code == 0, printed
        return json.loads(printed.strip().splitlines()[-1])

    plain, judged = estimated("--no-judge"), estimated("--judge")
    assert judged["model_calls"] == 2 * plain["model_calls"] > 0
    assert fake_llm.calls == []  # an estimate calls no model


def test_the_estimate_counts_the_judge_calls() -> None:
    plain = estimate(count=10, chunk_tokens=[500, 500], pairs_per_call=5, calls_per_batch=3)
    judged = estimate(count=10, chunk_tokens=[500, 500], pairs_per_call=5, calls_per_batch=3, judge=True)
    assert judged.calls == 2 * plain.calls and judged.calls_max == 2 * plain.calls_max
    assert judged.prompt_tokens > plain.prompt_tokens and judged.completion_tokens > plain.completion_tokens


def test_the_train_dialog_offers_the_judge_and_passes_it_on(alice, agent, ready_document, settings) -> None:
    settings.MASSCER_JUDGE_DEFAULT = True
    form = TrainForm(
        {"count": 3, "agents": [agent.pk], "model": "m", "judge": "on", "judge_threshold": "5"},
        agents=Agent.objects.all(), conversations=False,
    )  # fmt: skip
    assert form.fields["judge"].initial is True
    assert form.is_valid(), form.errors
    assert form.job_params()["judge"] is True and form.job_params()["judge_threshold"] == 5
    unchecked = TrainForm({"count": 3, "agents": [agent.pk], "model": "m"}, agents=Agent.objects.all(),
                          conversations=False)
    assert unchecked.is_valid() and unchecked.job_params()["judge"] is False


# --- reading the judge's reply ------------------------------------------------------------------


def test_a_fenced_or_sloppy_judge_reply_is_read() -> None:
    from masscer.lib.llm import parse_judge_scores

    fenced = 'Here:\n```json\n{"scores": [{"id": 2, "faithfulness": 1, "answerability": "4", "usefulness": 5}]}\n```'
    scores, error = parse_judge_scores(fenced, 2)
    assert scores[0] is None and scores[1] is not None and scores[1].faithfulness == 1
    assert error == "the judge scored 1 of 2 pairs"
    sloppy = "{'scores': [{'faithfulness': 9, 'answerability': 0, 'usefulness': 3, 'reasons': {'faithfulness': 'x'}}]}"
    (score,), error = parse_judge_scores(sloppy, 1)
    assert error is None and (score.faithfulness, score.answerability) == (5, 1)  # clamped to 1-5
    assert score.as_dict()["reasons"] == {"faithfulness": "x", "answerability": "", "usefulness": ""}
    assert parse_judge_scores("no idea", 2) == ([None, None], "the judge's reply has no scores")


def test_the_train_dialog_starts_a_judged_job(client, alice, agent, ready_document, settings) -> None:
    settings.MASSCER_JUDGE_DEFAULT = False
    document = ready_document(alice, pages=1)
    client.force_login(alice)
    page = client.get(reverse("training:new") + f"?document={document.pk}").content.decode()
    assert "Judge each pair" in page and 'name="judge_threshold"' in page
    form = {"document": document.pk, "count": 3, "agents": [agent.pk], "model": "fake-model", "judge": "on",
            "judge_threshold": 3, "top_p": 1, "frequency_penalty": 0}
    response = client.post(reverse("training:new"), form)
    assert response.status_code == 302, response.content.decode()[:2000]
    job = TrainingJob.objects.get()
    assert job.judge is True and job.judge_threshold == 3
    detail = client.get(reverse("training:job", args=[job.pk])).content.decode()
    assert "pairs with faithfulness below 3 are replaced" in detail
