"""Question types, audience and difficulty (#15.2): spread over N, asked in the prompt, recorded on
each completion, chosen at every door and filtered in review and export."""
from __future__ import annotations

import json
from io import StringIO
from pathlib import Path
from typing import Any

import pytest
from django.core.exceptions import ValidationError
from django.core.management import call_command
from django.core.management.base import CommandError
from django.utils import timezone

from documents.models import Document
from masscer.lib import llm
from masscer.lib.llm.prompts import (
    DIFFICULTY_RULES,
    QUESTION_TYPE_RULES,
    chat_user_message,
    completion_prompt,
)
from masscer.tests import web
from masscer.tests.web import eager_celery  # noqa: F401 - fixture
from testing.fakellm import make_pairs, read_prompt
from testing.processes import manage
from training.export import export_lines
from training.models import Completion, TrainingJob, WorkItem
from training.question_types import (
    DIFFICULTIES,
    QUESTION_TYPES,
    clean_types,
    neighbour_units,
    parse_types,
    type_counts,
)
from training.services import handoff, job_create, job_summary
from training.services.jobs import plan_items
from training.validation import Candidate, QuestionIndex, evidence_in_source, screen
from workspaces.services import api_token_create

from .factories import make_chunk, make_completions, make_document, make_job, numbered
from .test_generation import run_job
from .test_worker_integration import SAMPLES, worker_env, workers  # noqa: F401 - fixtures

pytestmark = pytest.mark.django_db

SOURCE = (
    "The Gold plan includes two services a year and free brake pads. It costs 149 euros per year. "
    "You can cancel within 14 days for a full refund."
)
# What the fake model asks for each kind (testing/fakellm/pairs.py): proof the rule reached it.
FAKE_OPENINGS = {
    "procedural": ("How does one go about", "What are the steps for", "How is"),
    "unanswerable": ("What does", "Who first proposed", "On what date"),
}


def request(question_type: str | None = None, **guidance: str) -> llm.PairRequest:
    """A document request with the given guidance (none at all when `question_type` is None)."""
    chosen = llm.Guidance(question_type=question_type or "factual", **guidance)
    return llm.PairRequest(
        source=SOURCE, style="synthesize", count=3, existing_questions=(), instructions="", params=llm.GenParams(),
        feedback="", kind="document", model="m", **({} if question_type is None else {"guidance": chosen}),
    )


# --- the spread and the parsing (no database) -----------------------------------------------------


def test_n_is_spread_over_the_types_by_the_largest_remainder() -> None:
    counts = type_counts({"factual": 2, "procedural": 1, "unanswerable": 1}, 10)
    assert counts == {"factual": 5, "procedural": 3, "unanswerable": 2}  # 5 / 2.5 / 2.5: the tie to the first
    assert sum(type_counts({"factual": 3, "comparison": 7, "multi_hop": 1}, 1000).values()) == 1000
    assert type_counts({}, 7) == {"factual": 7}
    assert type_counts({"factual": 1, "procedural": 5}, 1) == {"procedural": 1}


def test_the_command_line_form_is_parsed_and_checked() -> None:
    assert parse_types("factual=2, procedural=1,unanswerable") == {"factual": 2, "procedural": 1, "unanswerable": 1}
    assert parse_types("") == {}
    with pytest.raises(ValidationError, match="Unknown question type 'why'; the known types are factual, procedural"):
        parse_types("factual=2,why=1")
    with pytest.raises(ValidationError, match="The share of 'factual' must be a whole number"):
        parse_types("factual=two")
    with pytest.raises(ValidationError, match="at least one question type a share above 0"):
        parse_types("factual=0,procedural=0")
    with pytest.raises(ValidationError, match="given twice"):
        parse_types("factual=1,factual=2")
    with pytest.raises(ValidationError, match="between 0 and 1000"):
        clean_types({"factual": -1})
    with pytest.raises(ValidationError, match="whole number"):
        clean_types({"factual": True})
    assert clean_types({"factual": 1, "comparison": 0}) == {"factual": 1}


def test_every_type_and_level_has_its_prompt_rule() -> None:
    assert set(QUESTION_TYPES) == set(QUESTION_TYPE_RULES)
    assert set(DIFFICULTIES) - {""} == set(DIFFICULTY_RULES)


def test_neighbouring_chunks_pair_up_within_a_source() -> None:
    keys = [("a", 0), ("a", 1), ("a", 2), ("b", 0), ("b", 1), ("c", 0), ("a", 4), ("a", 5)]
    assert neighbour_units(keys, 2) == [[0, 1], [3, 4], [6, 7]]  # a's 2 has no partner, nor c's only chunk


# --- the prompt --------------------------------------------------------------------------------


def test_a_factual_prompt_is_todays_prompt() -> None:
    plain = request()
    assert chat_user_message(request("factual")) == chat_user_message(plain)
    assert completion_prompt(request("factual")) == completion_prompt(plain)
    assert "Question type:" not in chat_user_message(plain) and "Audience:" not in chat_user_message(plain)


@pytest.mark.parametrize("question_type", [key for key in QUESTION_TYPES if key != "factual"])
def test_the_prompt_for_each_type_carries_its_rule(question_type: str) -> None:
    rule = QUESTION_TYPE_RULES[question_type].format(noun="document")
    chat = chat_user_message(request(question_type))
    assert f"- Question type: {question_type}. {rule}" in chat
    assert f"Question type: {question_type}. {rule}" in completion_prompt(request(question_type))
    assert read_prompt(chat).question_type == question_type  # what the fake model reads
    answerable = "- Each question must be answerable from the document alone"
    assert (answerable in chat) == (question_type != "unanswerable")


def test_an_unanswerable_prompt_asks_for_the_closest_verbatim_quote() -> None:
    chat = chat_user_message(request("unanswerable"))
    assert "says plainly that the document does not say, then briefly what it does say" in chat
    assert "copied verbatim, character for character, from the document: the closest thing it says" in chat


def test_audience_and_difficulty_appear_in_the_prompt() -> None:
    chat = chat_user_message(request("procedural", audience="new <source> customers", difficulty="hard"))
    assert "- Audience: new &lt;source&gt; customers. Ask what they would ask" in chat  # cannot open a fence
    assert f"- Difficulty: hard. {DIFFICULTY_RULES['hard']}" in chat
    base = completion_prompt(request("factual", audience="mechanics", difficulty="easy"))
    assert "\nAudience: mechanics." in base and "\nDifficulty: easy." in base


def test_an_unanswerable_pair_with_a_verbatim_quote_is_accepted_and_an_invented_one_is_not() -> None:
    pairs = [
        Candidate("What does the Gold plan cost per month?", "The text does not say; it gives a yearly price.",
                  "It costs 149 euros per year."),
        Candidate("Who founded the garage?", "The text does not say.", "The garage was founded in 1990."),
    ]
    rejected: list[tuple[str, Candidate]] = []
    accepted, reasons = screen(pairs, source=SOURCE, index=QuestionIndex(0.8), wanted=2, rejected=rejected)
    assert accepted == [pairs[0]] and reasons == {"evidence_not_found": 1}


@pytest.mark.parametrize("question_type", list(QUESTION_TYPES))
def test_the_fake_model_keeps_verbatim_evidence_for_every_type(question_type: str) -> None:
    pairs = make_pairs(SOURCE * 3, 4, question_type=question_type)
    assert len(pairs) == 4 and all(evidence_in_source(p["evidence"], SOURCE) for p in pairs)
    if question_type == "unanswerable":
        assert all(p["answer"].startswith("The text does not say.") for p in pairs)


# --- planning ---------------------------------------------------------------------------------


def test_multi_hop_items_read_two_neighbouring_chunks(alice) -> None:
    job = make_job(alice, status=TrainingJob.Status.CHUNKING)
    manual, leaflet = make_document(alice), make_document(alice, title="Leaflet")
    chunks = [make_chunk(manual, index=i) for i in range(3)] + [make_chunk(leaflet, index=0)]
    items = plan_items(job, chunks, {"factual": 4, "multi_hop": 2}, timezone.now())
    hops = [item for item in items if item.question_type == "multi_hop"]
    assert [(item.chunk, item.span, item.quota) for item in hops] == [(chunks[0], 2, 2)]
    # (Factual items may group small chunks too: `_spans`; their quotas still add up.)
    assert sum(item.quota for item in items if item.question_type == "factual") == 4


def test_without_two_neighbouring_chunks_multi_hop_becomes_factual(alice) -> None:
    job = make_job(alice, status=TrainingJob.Status.CHUNKING)
    chunks = [make_chunk(make_document(alice, title=f"Note {n}")) for n in range(2)]
    items = plan_items(job, chunks, {"multi_hop": 3, "procedural": 1}, timezone.now())
    assert {item.question_type for item in items} == {"factual", "procedural"}
    assert sum(item.quota for item in items) == 4


def test_the_types_of_a_short_job_read_different_chunks(alice) -> None:
    """Fewer pairs of a type than chunks: each type samples the text at its own places, so two
    factual and two procedural pairs come from four chunks, not twice from the same two."""
    job = make_job(alice, status=TrainingJob.Status.CHUNKING)
    document = make_document(alice)
    chunks = [make_chunk(document, index=i, text="word " * 700) for i in range(10)]
    for chunk in chunks:
        chunk.token_count = 800  # one chunk per item: none is small enough to share a call
        chunk.save(update_fields=["token_count"])
    counts = {"factual": 2, "procedural": 2, "explanatory": 2, "comparison": 2, "unanswerable": 2}
    items = plan_items(job, chunks, counts, timezone.now())
    read: dict[str, set[int]] = {}
    for item in items:
        read.setdefault(item.question_type, set()).add(item.chunk.index)
    assert read["factual"] == {2, 7}  # an untyped job's places: the middles of two stretches
    assert all(len(indexes) == 2 for indexes in read.values())
    assert len(set().union(*read.values())) == 10  # five types, two pairs each: every chunk once


def test_quota_moves_only_to_items_of_the_same_type(alice) -> None:
    job = make_job(alice, status=TrainingJob.Status.GENERATING)
    document = make_document(alice)
    chunks = [make_chunk(document, index=i, text="word " * 2000) for i in range(3)]
    for chunk in chunks:
        chunk.token_count = 2000
        chunk.save(update_fields=["token_count"])
    giver = WorkItem.objects.create(job=job, chunk=chunks[0], quota=2, question_type="procedural")
    same = WorkItem.objects.create(job=job, chunk=chunks[1], quota=2, question_type="procedural")
    WorkItem.objects.create(job=job, chunk=chunks[2], quota=2, question_type="factual")
    assert [receiver.pk for receiver in handoff._candidates(giver)] == [same.pk]


# --- a whole job --------------------------------------------------------------------------------


def test_a_typed_job_makes_exactly_n_with_each_completion_of_its_type(alice, agent, ready_document, fake_llm) -> None:
    document = ready_document(alice, pages=3)
    shares = {"factual": 2, "procedural": 1, "unanswerable": 1}
    job = job_create(owner=alice, count=8, agents=[agent], documents=[document], question_types=shares,
                     audience="new customers", difficulty="easy")
    run_job(job)
    assert job.status == TrainingJob.Status.COMPLETED and job.created_count == 8 and job.shortfall == 0
    made = list(Completion.objects.filter(job=job))
    by_type = {key: [c for c in made if c.question_type == key] for key in shares}
    assert {key: len(rows) for key, rows in by_type.items()} == {"factual": 4, "procedural": 2, "unanswerable": 2}
    for key in ("procedural", "unanswerable"):
        assert all(c.question.startswith(FAKE_OPENINGS[key]) for c in by_type[key]), [c.question for c in by_type[key]]
    assert all(c.answer.startswith("The text does not say.") for c in by_type["unanswerable"])
    assert all(evidence_in_source(c.evidence, c.chunk.text) for c in made)
    generation = [call for call in fake_llm.calls if call["requested_count"]]
    assert {call["question_type"] for call in generation} == set(shares)
    assert all("- Audience: new customers." in call["prompt"] for call in generation)
    assert all("- Difficulty: easy." in call["prompt"] for call in generation)
    assert job_summary(job)["type_mix"] == {
        "factual": {"asked": 4, "made": 4}, "procedural": {"asked": 2, "made": 2},
        "unanswerable": {"asked": 2, "made": 2},
    }


def test_a_multi_hop_job_plans_spans_of_two_and_makes_exactly_n(alice, agent, ready_document, fake_llm) -> None:
    document = ready_document(alice, pages=4, sentences_per_page=60)
    job = job_create(owner=alice, count=4, agents=[agent], documents=[document], question_types={"multi_hop": 1})
    run_job(job)
    items = list(WorkItem.objects.filter(job=job))
    assert items and all(item.span == 2 and item.question_type == "multi_hop" for item in items)
    assert job.created_count == 4
    assert set(Completion.objects.filter(job=job).values_list("question_type", flat=True)) == {"multi_hop"}


def test_mining_refuses_other_types(alice, agent) -> None:
    with pytest.raises(ValidationError, match="Question types apply to the synthesize style"):
        job_create(owner=alice, count=2, agents=[agent], conversations=[web.conversation(alice)], style="mine",
                   question_types={"procedural": 1})


# --- the doors --------------------------------------------------------------------------------


def api(client: Any, method: str, url: str, token: str, body: Any = None) -> Any:
    headers = {"Authorization": f"Bearer {token}"}
    if body is None:
        return getattr(client, method)(url, headers=headers)
    return getattr(client, method)(url, json.dumps(body), content_type="application/json", headers=headers)


def test_the_api_takes_the_new_fields_and_returns_them(client, alice, agent) -> None:
    token = api_token_create(user=alice, name="tests")[1]
    document = make_document(alice)
    body = {"count": 6, "documents": [document.pk], "agents": [agent.pk], "question_types": {"factual": 1,
            "comparison": 2}, "audience": "  nurses  on call ", "difficulty": "medium", "seed_examples": 3}
    response = api(client, "post", "/api/jobs", token, body)
    assert response.status_code == 201, response.content
    created = response.json()
    assert created["question_types"] == {"factual": 1, "comparison": 2}
    assert created["type_mix"] == {"factual": {"asked": 2, "made": 0}, "comparison": {"asked": 4, "made": 0}}
    assert (created["audience"], created["difficulty"], created["seed_examples"]) == ("nurses on call", "medium", 3)
    assert created["template"] is None
    detail = api(client, "get", f"/api/jobs/{created['job_id']}", token).json()
    assert detail["type_mix"] == created["type_mix"]


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ({"question_types": {"why": 1}}, "Unknown question type 'why'; the known types are factual"),
        ({"question_types": {"factual": 0}}, "at least one question type a share above 0"),
        ({"template": "house style"}, "There is no prompt template named 'house style'"),
        ({"seed_examples": 21}, "seed_examples"),
        ({"difficulty": "brutal"}, "difficulty"),
    ],
)
def test_the_api_refuses_bad_guidance_with_a_400(client, alice, agent, extra, message) -> None:
    token = api_token_create(user=alice, name="tests")[1]
    body = {"count": 2, "documents": [make_document(alice).pk], "agents": [agent.pk], **extra}
    response = api(client, "post", "/api/jobs", token, body)
    assert response.status_code == 400 and message in response.json()["detail"]
    assert not TrainingJob.objects.exists()


@pytest.fixture
def typed(alice, agent) -> dict[str, Completion]:
    """One completion of each of three kinds, plus one made before types ("")."""
    job = make_job(alice, count=4)
    chunk = make_chunk(make_document(alice))
    pairs = numbered(4)
    rows = {}
    for n, key in enumerate(["procedural", "unanswerable", "factual", ""]):
        rows[key] = make_completions(job, chunk, [pairs[n]], agents=[agent], question_type=key, status="approved")[0]
    return rows


def test_the_api_lists_completions_by_type(client, alice, typed) -> None:
    token = api_token_create(user=alice, name="tests")[1]
    items = api(client, "get", "/api/completions?question_type=procedural", token).json()["items"]
    assert [(c["id"], c["question_type"]) for c in items] == [(typed["procedural"].pk, "procedural")]
    factual = api(client, "get", "/api/completions?question_type=factual", token).json()["items"]
    assert {c["id"] for c in factual} == {typed["factual"].pk, typed[""].pk}  # older rows were factual
    assert {c["question_type"] for c in factual} == {"factual", None}
    response = api(client, "get", "/api/completions?question_type=trivia", token)
    assert response.status_code == 400 and "Unknown question type 'trivia'" in response.json()["detail"]


def test_the_review_queue_filters_by_type_and_the_card_shows_it(client, alice, typed) -> None:
    client.force_login(alice)
    body = client.get("/jobs/review/?status=all&question_type=unanswerable").content.decode()
    assert f'id="c-{typed["unanswerable"].pk}"' in body and f'id="c-{typed["procedural"].pk}"' not in body
    assert 'data-question-type="unanswerable">Unanswerable (the source does not say)</span>' in body
    assert '<option value="unanswerable" selected>' in body
    everything = client.get("/jobs/review/?status=all&question_type=nonsense").content.decode()
    assert all(f'id="c-{row.pk}"' in everything for row in typed.values())  # an unknown kind: no filter


def test_records_carry_the_type_and_exports_filter_by_it(client, alice, agent, typed, capsys) -> None:
    records = [json.loads(line) for line in export_lines(agent=agent, fmt="records", status="all")]
    assert {r["id"]: r["question_type"] for r in records} == {
        typed["procedural"].pk: "procedural", typed["unanswerable"].pk: "unanswerable",
        typed["factual"].pk: "factual", typed[""].pk: None,
    }
    assert all("judge" in r for r in records)
    only = [json.loads(line)["id"] for line in export_lines(agent=agent, fmt="records", question_type="unanswerable")]
    assert only == [typed["unanswerable"].pk]
    token = api_token_create(user=alice, name="tests")[1]
    response = api(client, "get", f"/api/agents/{agent.pk}/export?format=records&question_type=procedural", token)
    assert [json.loads(line)["id"] for line in b"".join(response.streaming_content).splitlines()] == [
        typed["procedural"].pk
    ]
    bad = api(client, "get", f"/api/agents/{agent.pk}/export?format=records&question_type=why", token)
    assert bad.status_code == 400 and "Unknown question type 'why'" in bad.json()["detail"]
    capsys.readouterr()
    call_command("export", "--agent", "support", "--user", "alice", "--format", "records", "--type", "factual")
    written = capsys.readouterr().out.splitlines()
    assert {json.loads(line)["id"] for line in written} == {typed["factual"].pk, typed[""].pk}


def test_the_agent_page_downloads_one_kind_of_question(client, alice, agent, typed) -> None:
    client.force_login(alice)
    page = client.get(f"/agents/{agent.pk}/").content.decode()
    assert "data-export-form" in page and '<option value="unanswerable">' in page
    response = client.get(f"/agents/{agent.pk}/export/?format=records&status=approved&question_type=unanswerable")
    assert response.status_code == 200 and "unanswerable" in response["Content-Disposition"]
    lines = b"".join(response.streaming_content).splitlines()
    assert [json.loads(line)["id"] for line in lines] == [typed["unanswerable"].pk]
    everything = client.get(f"/agents/{agent.pk}/export/?format=records&status=approved&question_type=")
    assert len(b"".join(everything.streaming_content).splitlines()) == 4
    bad = client.get(f"/agents/{agent.pk}/export/?format=records&question_type=trivia")
    assert bad.status_code == 400 and "Unknown question type 'trivia'" in bad.content.decode()


def test_the_admin_filters_completions_by_type(admin_client, typed) -> None:
    body = admin_client.get("/admin/training/completion/?question_type=procedural").content.decode()
    assert "1 completion" in body and typed["procedural"].question in body
    assert typed["unanswerable"].question not in body


@pytest.fixture
def notes(tmp_path: Path, settings: Any) -> Path:
    settings.MEDIA_ROOT = tmp_path / "media"
    path = tmp_path / "notes.txt"
    path.write_text(SOURCE + "\n")
    return path


@pytest.mark.django_db(transaction=True)
@pytest.mark.usefixtures("eager_celery")
def test_the_train_command_takes_types_audience_and_difficulty(alice, notes, fake_llm) -> None:
    out = StringIO()
    call_command(
        "train", str(notes), "--user", "alice", "--agent", "support", "-n", "3", "--types", "factual=2,procedural=1",
        "--audience", "car owners", "--difficulty", "easy", "--seed-examples", "2", stdout=out, stderr=StringIO(),
    )  # fmt: skip
    job = TrainingJob.objects.get()
    assert job.question_types == {"factual": 2, "procedural": 1}
    assert (job.audience, job.difficulty, job.seed_examples) == ("car owners", "easy", 2)
    assert job.created_count == 3
    assert "  types: factual 2 of 2, procedural 1 of 1" in out.getvalue()


def test_a_bad_types_option_is_a_command_error_and_stores_nothing(alice, notes) -> None:
    with pytest.raises(CommandError, match="Unknown question type 'how'; the known types are factual"):
        call_command("train", str(notes), "--user", "alice", "--agent", "support", "-n", "3", "--types", "how=1",
                     stdout=StringIO(), stderr=StringIO())
    assert not Document.objects.exists() and not TrainingJob.objects.exists()


def test_the_train_dialog_sets_shares_audience_difficulty_and_seed_examples(client, alice, agent) -> None:
    document = web.document(alice)
    client.force_login(alice)
    page = client.get(f"/jobs/new/?document={document.pk}").content.decode()
    for key in QUESTION_TYPES:
        assert f'name="type_{key}"' in page
    assert 'name="audience"' in page and 'name="difficulty"' in page and 'name="seed_examples"' in page
    assert '<select name="template"' in page
    data = {"document": document.pk, "count": 6, "model": "fake-model", "agents": [agent.pk], "type_factual": "1",
            "type_explanatory": "2", "type_comparison": "", "audience": "students", "difficulty": "hard",
            "seed_examples": "4"}
    response = client.post("/jobs/new/", data)
    job = TrainingJob.objects.get()
    assert response.status_code == 302 and response["Location"] == f"/jobs/{job.pk}/"
    assert job.question_types == {"factual": 1, "explanatory": 2}
    assert (job.audience, job.difficulty, job.seed_examples) == ("students", "hard", 4)
    detail = client.get(f"/jobs/{job.pk}/").content.decode()
    assert "data-type-mix" in detail and "Explanatory (why): 0 of 4" in detail
    assert '<dd data-audience>students</dd>' in detail


def test_the_train_dialog_says_why_all_zero_shares_cannot_run(client, alice, agent) -> None:
    document = web.document(alice)
    client.force_login(alice)
    data = {"document": document.pk, "count": 6, "model": "fake-model", "agents": [agent.pk], "type_factual": "0"}
    response = client.post("/jobs/new/", data)
    assert response.status_code == 400
    assert "Give at least one question type a share above 0." in response.content.decode()
    assert not TrainingJob.objects.exists()


@pytest.mark.integration
@pytest.mark.django_db(transaction=True)
def test_typed_job_on_real_workers_makes_exactly_n_of_each_type(worker_env, workers, fake_llm) -> None:  # noqa: F811
    pdf = SAMPLES / "pdf" / "pdflatex-4-pages.pdf"
    result = manage(
        "train", str(pdf), "--count", "9", "--agent", "support", "--types", "factual=1,explanatory=1,multi_hop=1",
        "--json", env=worker_env, timeout=180,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr + result.stdout + workers.read_text()[-3000:]
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    assert summary["completions_created"] == 9 and summary["shortfall"] == 0, json.dumps(summary)
    assert summary["type_mix"] == {key: {"asked": 3, "made": 3} for key in ("factual", "explanatory", "multi_hop")}
    exported = manage("export", "--agent", "support", "--format", "records", "--status", "all", "--type",
                      "multi_hop", env=worker_env, timeout=60)
    assert [json.loads(line)["question_type"] for line in exported.stdout.splitlines()] == ["multi_hop"] * 3
    assert WorkItem.objects.filter(question_type="multi_hop").exclude(span=2).count() == 0
