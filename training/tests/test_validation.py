from __future__ import annotations

from training.validation import Candidate, QuestionIndex, evidence_in_source, screen

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
