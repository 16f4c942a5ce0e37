"""A reply that is almost JSON (single quotes, unquoted keys, raw newlines, bad escapes) is
repaired and its pairs are taken: no pair is lost to it and no second call is paid for it (#15.4)."""
from __future__ import annotations

import json
from collections.abc import Callable

import pytest

from masscer.lib.llm import parse_json_pairs
from training.models import Completion, TrainingJob

from .test_generation import new_job, run_job

pytestmark = pytest.mark.django_db


def _pairs(sentences: list[str]) -> list[dict[str, str]]:
    topics = ("the first point", "the second point", "the third point")
    return [
        {"question": f"What does the manual say about {topic}?", "answer": f"It says: {sentence}", "evidence": sentence}
        for topic, sentence in zip(topics, sentences, strict=False)
    ]


def single_quotes(pairs: list[dict[str, str]]) -> str:
    return repr({"pairs": pairs})


def unquoted_keys(pairs: list[dict[str, str]]) -> str:
    return json.dumps({"pairs": pairs}).replace('"pairs":', "pairs:").replace('"question":', "question:").replace(
        '"answer":', "answer:").replace('"evidence":', "evidence:")


def raw_newlines(pairs: list[dict[str, str]]) -> str:
    text = json.dumps({"pairs": [{**p, "answer": p["answer"] + "\\nSee the manual."} for p in pairs]})
    return text.replace("\\n", "\n")  # a real line break inside a JSON string


def bad_escapes(pairs: list[dict[str, str]]) -> str:
    text = json.dumps({"pairs": [{**p, "answer": p["answer"] + " (see \\d)"} for p in pairs]})
    return text.replace("\\\\d", "\\d")  # "\d" is not a JSON escape


MALFORMED: dict[str, Callable[[list[dict[str, str]]], str]] = {
    "single quotes": single_quotes,
    "unquoted keys": unquoted_keys,
    "raw newlines": raw_newlines,
    "bad escapes": bad_escapes,
}
SENTENCES = ["Refunds take five days.", "Gold costs 149 euros.", "Support answers at night."]


@pytest.mark.parametrize("name", MALFORMED)
def test_the_parser_repairs_an_almost_json_reply(name: str) -> None:
    text = MALFORMED[name](_pairs(SENTENCES))
    with pytest.raises(ValueError):
        json.loads(text)  # the reply really is malformed
    pairs, error = parse_json_pairs(text)
    assert error is None
    assert [p.evidence for p in pairs] == SENTENCES
    assert all(p.question.startswith("What does the manual say") for p in pairs)


def test_prose_without_pairs_is_still_an_error() -> None:
    for text in ("Sure!! here r the pairs:: [[[ question -> answer ;; evidence <<<", "I cannot help with that."):
        pairs, error = parse_json_pairs(text)
        assert pairs == [] and error


@pytest.mark.parametrize("name", MALFORMED)
def test_a_job_takes_the_pairs_of_a_repairable_reply_in_one_call(
    name: str, alice, agent, ready_document, fake_llm
) -> None:
    document = ready_document(alice, pages=1, sentences_per_page=12)
    text = document.pages.get().text
    sentences = [s.strip() + "." for s in text.split(".") if s.strip()][:3]
    fake_llm.set_default([{"kind": "raw", "text": MALFORMED[name](_pairs(sentences))}])
    job = new_job(alice, document, agent, 3)
    run_job(job)
    job.refresh_from_db()
    assert job.status == TrainingJob.Status.COMPLETED and job.created_count == 3
    assert sorted(Completion.objects.filter(job=job).values_list("evidence", flat=True)) == sorted(sentences)
    assert len(fake_llm.calls) == 1  # nothing re-asked
