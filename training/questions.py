"""The questions a job already has, kept per worker process and refreshed with the rows added since.

Every work item needs the job's questions twice per model call: in the prompt (so the model
does not repeat them) and in the duplicate check of its reply. Reading all of them for every
work item made each item cost O(N) rows and index entries, O(N²) over a job; here the
threads of one llm worker process share one copy per job and fetch only the rows with a
higher primary key than the newest they have seen (one short query).

The copy only grows from committed rows, so it never holds a question that was not stored.
A work item screens its replies against this copy plus its own `overlay` (what it accepted
itself), so duplicates inside one reply and across its calls are caught before the next
refresh sees them.

Ids are handed out when rows are inserted, not when they are committed: on PostgreSQL a
transaction holding id 100 may commit after another one's id 101 was read. So a refresh
reads again from a floor that lags LATE_COMMIT_SECONDS behind (the newest id seen that long
ago: every row with an id at or below it was inserted at least that long ago, and a store's
transaction lasts milliseconds) and skips the ids it folded in already. Without it, a row
committed late was never seen by the copy: a work item counted too few of its own
completions, numbered new ones onto ordinals already taken (an IntegrityError that stopped
its run) and could ask for more than its quota.
"""
from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Collection

from django.conf import settings

from . import hotsql
from .models import TrainingJob
from .validation import QuestionIndex

# A job's copy is dropped when no thread has used it for this long.
IDLE_SECONDS = 300.0
# At most this many jobs are kept per process (the least recently used go first).
MAX_JOBS = 16
# How long a row's id may be known before its transaction commits (see the module's doc).
LATE_COMMIT_SECONDS = 30.0


class JobQuestions:
    """One job's stored questions as this process knows them."""

    def __init__(self, job_id: int) -> None:
        self.job_id = job_id
        self.index = QuestionIndex(threshold=settings.MASSCER_NEAR_DUPLICATE_JACCARD)
        self.recent: list[tuple[int, str, str]] = []  # (chunk id, question type, question), oldest first
        # By (chunk id, question type): a work item's own questions are those of its type on its chunks.
        self.by_chunk: dict[tuple[int, str], list[str]] = {}
        self.cursor = 0  # the highest id folded in
        # Every row with an id at or below `floor` is folded in (or was never committed); the
        # ids above it that are, and (time, cursor) marks from which the floor moves up.
        self.floor = 0
        self.seen: set[int] = set()
        self.marks: deque[tuple[float, int]] = deque()
        self.agent_ids: list[int] | None = None
        self.used_at = time.monotonic()
        self.refreshed_at = float("-inf")
        self._lock = threading.Lock()

    def refresh(self, max_age: float = 0.0) -> None:
        """Fold in the questions stored since the last refresh (by any process).

        With `max_age`, a copy refreshed less than that many seconds ago is left as it is.
        """
        if max_age and time.monotonic() - self.refreshed_at < max_age:
            return
        with self._lock:
            now = self.refreshed_at = time.monotonic()
            self._raise_floor(now)
            for pk, chunk_id, question_type, question in hotsql.questions_since(self.job_id, self.floor):
                if pk in self.seen:
                    continue
                self.seen.add(pk)
                self.index.add(question)
                self.recent.append((chunk_id, question_type, question))
                self.by_chunk.setdefault((chunk_id, question_type), []).append(question)
                self.cursor = max(self.cursor, pk)
            self.marks.append((now, self.cursor))
            self.used_at = time.monotonic()

    def _raise_floor(self, now: float) -> None:
        """Move the floor to the newest id seen LATE_COMMIT_SECONDS ago (or earlier)."""
        floor = self.floor
        while self.marks and now - self.marks[0][0] >= LATE_COMMIT_SECONDS:
            floor = max(floor, self.marks.popleft()[1])
        if floor != self.floor:
            self.floor = floor
            self.seen = {pk for pk in self.seen if pk > floor}

    def made_by_chunk(self, chunk_ids: Collection[int], question_type: str) -> dict[int, int]:
        """How many completions of `question_type` each of `chunk_ids` has (a work item's own;
        rows from before question types, typed "", count as every type's)."""
        return {
            chunk_id: len(self.by_chunk.get((chunk_id, question_type), ())) + len(self.by_chunk.get((chunk_id, ""), ()))
            for chunk_id in chunk_ids
        }

    def own(self, chunk_ids: Collection[int], question_type: str) -> list[str]:
        """The questions a work item of `question_type` over `chunk_ids` has made."""
        return [
            question
            for chunk_id in chunk_ids
            for kind in dict.fromkeys((question_type, ""))
            for question in self.by_chunk.get((chunk_id, kind), ())
        ]

    def others(self, chunk_ids: Collection[int], question_type: str, limit: int) -> list[str]:
        """The newest `limit` questions not of a work item of `question_type` over `chunk_ids`
        (other chunks, or other types on its chunks), oldest first."""
        found: list[str] = []
        for chunk_id, kind, question in reversed(self.recent):
            if len(found) >= limit:
                break
            if chunk_id not in chunk_ids or kind not in (question_type, ""):
                found.append(question)
        return found[::-1]

    def agents(self) -> list[int]:
        """The agents the job's completions go to (fixed when the job is created)."""
        if self.agent_ids is None:
            self.agent_ids = hotsql.job_agent_ids(self.job_id)
        return self.agent_ids


class Overlay:
    """A job's shared index plus what one work item accepted itself (the `screen` interface)."""

    def __init__(self, shared: QuestionIndex, threshold: float) -> None:
        self.shared = shared
        self.own = QuestionIndex(threshold=threshold)

    def add(self, question: str) -> None:
        self.own.add(question)

    def is_duplicate(self, question: str) -> bool:
        return self.own.is_duplicate(question) or self.shared.is_duplicate(question)


_jobs: dict[tuple[int, object], JobQuestions] = {}
_jobs_lock = threading.Lock()


def for_job(job: TrainingJob) -> JobQuestions:
    """This process's copy of the job's questions (created empty; call `refresh`).

    Keyed by the job's id and creation time: a test database that hands out an id again
    (after a rollback) never meets an older job's copy.
    """
    key = (job.pk, job.created_at)
    now = time.monotonic()
    with _jobs_lock:
        copy = _jobs.get(key)
        if copy is None:
            for stale in [key for key, value in _jobs.items() if now - value.used_at > IDLE_SECONDS]:
                del _jobs[stale]
            while len(_jobs) >= MAX_JOBS:
                del _jobs[min(_jobs, key=lambda key: _jobs[key].used_at)]
            copy = _jobs[key] = JobQuestions(job.pk)
        copy.used_at = now
        return copy


def forget(job_id: int | None = None) -> None:
    """Drop the copy of one job (or of all): the next use reads the questions again."""
    with _jobs_lock:
        for key in [key for key in _jobs if job_id is None or key[0] == job_id]:
            del _jobs[key]
