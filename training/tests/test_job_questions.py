"""The per-process copy of a job's questions misses no row, even one committed after a row with a
higher id was read (PostgreSQL hands out ids at insert, not at commit)."""
from __future__ import annotations

from typing import Any

import pytest

from training import hotsql, questions

Row = tuple[int, int, str, str]


class CommittedRows:
    """What `hotsql.questions_since` returns, with rows made visible (committed) one by one."""

    def __init__(self) -> None:
        self.visible: list[Row] = []
        self.asked: list[int] = []

    def commit(self, *rows: Row) -> None:
        self.visible = sorted(self.visible + list(rows))

    def __call__(self, job_id: int, after_id: int) -> list[Row]:
        self.asked.append(after_id)
        return [row for row in self.visible if row[0] > after_id]


@pytest.fixture
def rows(monkeypatch: pytest.MonkeyPatch, settings: Any) -> CommittedRows:
    settings.MASSCER_NEAR_DUPLICATE_JACCARD = 0.8
    committed = CommittedRows()
    monkeypatch.setattr(hotsql, "questions_since", committed)
    return committed


def test_a_row_committed_after_a_higher_id_was_read_is_still_folded_in(rows, monkeypatch) -> None:
    clock = [1000.0]
    monkeypatch.setattr(questions.time, "monotonic", lambda: clock[0])
    copy = questions.JobQuestions(job_id=1)
    # Item A's transaction took id 10 but has not committed; item B's id 11 is read first.
    rows.commit((11, 7, "factual", "Where is the depot?"))
    copy.refresh()
    assert copy.made_by_chunk([5, 7], "factual") == {5: 0, 7: 1}
    rows.commit((10, 5, "factual", "What does the valve do?"))
    clock[0] += 0.2
    copy.refresh()
    assert copy.made_by_chunk([5, 7], "factual") == {5: 1, 7: 1}  # was {5: 0}: ordinals taken twice
    assert copy.index.is_duplicate("What does the valve do?")
    assert copy.own([5], "factual") == ["What does the valve do?"]
    clock[0] += 0.2
    copy.refresh()  # read again, folded once
    assert len(copy.recent) == 2 and copy.made_by_chunk([5, 7], "factual") == {5: 1, 7: 1}


def test_the_rows_read_again_are_only_the_last_seconds(rows, monkeypatch) -> None:
    clock = [1000.0]
    monkeypatch.setattr(questions.time, "monotonic", lambda: clock[0])
    copy = questions.JobQuestions(job_id=1)
    rows.commit(*[(pk, 1, "factual", f"Question number {pk} about the manual?") for pk in range(1, 51)])
    copy.refresh()
    clock[0] += 1
    copy.refresh()  # within LATE_COMMIT_SECONDS: everything since the start is read again
    clock[0] += questions.LATE_COMMIT_SECONDS
    rows.commit((51, 1, "factual", "A later question about the manual?"))
    copy.refresh()
    clock[0] += 1
    copy.refresh()
    # The floor moves up to the newest id seen LATE_COMMIT_SECONDS ago: old rows are not read again.
    assert rows.asked == [0, 0, 50, 50]
    assert len(copy.recent) == 51 and copy.cursor == 51 and copy.seen == {51}
