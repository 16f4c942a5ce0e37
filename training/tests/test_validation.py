from __future__ import annotations

import random

import pytest

from training.validation import Candidate, QuestionIndex, evidence_in_source, jaccard, question_words, screen

SOURCE = "The  Eiffel Tower was completed in 1889.\nIt is 330 metres tall. Gustave Eiffel's company built it."


def test_evidence_matches_ignoring_case_and_whitespace() -> None:
    assert evidence_in_source("the eiffel tower was\ncompleted in 1889", SOURCE)
    assert evidence_in_source("“It is 330 metres tall.”", SOURCE)
    assert not evidence_in_source("It is 300 metres tall.", SOURCE)
    assert not evidence_in_source("   ", SOURCE)


def test_near_duplicate_questions_are_caught() -> None:
    index = QuestionIndex(threshold=0.8)
    index.add("When was the Eiffel Tower completed?")
    assert index.is_duplicate("When was the Eiffel Tower completed ?")
    assert index.is_duplicate("when was the eiffel tower completed")
    assert not index.is_duplicate("How tall is the Eiffel Tower?")


def test_screen_counts_every_rejection_and_drops_extras() -> None:
    index = QuestionIndex(threshold=0.8)
    candidates = [
        Candidate("When was it completed?", "1889", "completed in 1889"),
        Candidate("When was it completed?", "1889", "completed in 1889"),
        Candidate("How tall is it?", "", "330 metres"),
        Candidate("Who built it?", "Eiffel's company", "made up quote"),
        Candidate("How tall is the tower?", "330 m", "It is 330 metres tall"),
        Candidate("Who built the tower?", "Gustave Eiffel's company", "Gustave Eiffel's company built it"),
    ]
    accepted, reasons = screen(candidates, source=SOURCE, index=index, wanted=2)
    assert [c.question for c in accepted] == ["When was it completed?", "How tall is the tower?"]
    assert reasons == {"duplicate": 1, "empty_field": 1, "evidence_not_found": 1, "extra_dropped": 1}


@pytest.mark.parametrize("threshold", [0.5, 0.7, 0.8, 0.9, 1.0])
def test_the_near_duplicate_index_finds_exactly_what_comparing_with_every_question_finds(threshold: float) -> None:
    """The prefix index compares a question with a few others only; it must miss nothing."""
    rng = random.Random(threshold)
    vocabulary = ["what", "is", "the", "of", "a", "how", "why", "tower", "eiffel", "built", "year", "metres",
                  "company", "iron", "paris", "visitors", "height", "designer", "gustave", "completed"]  # fmt: skip
    index = QuestionIndex(threshold=threshold)
    stored: list[frozenset[str]] = []
    found = expected = 0
    for _ in range(1500):
        size = rng.randint(0, 9)
        question = " ".join(rng.choice(vocabulary) for _ in range(size)) + "?"
        words = question_words(question)
        brute = any(jaccard(words, other) >= threshold for other in stored)
        assert index.is_duplicate(question) == brute, question
        found += index.is_duplicate(question)
        expected += brute
        if rng.random() < 0.5:
            index.add(question)
            stored.append(words)
    assert found == expected and 0 < expected < 1500  # both outcomes were exercised
