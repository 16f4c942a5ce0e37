"""Writes of the training app, one module per concern; the names other modules use are here.

- `state`: every job and work-item status write (the transition table, claims, leases).
- `replies`: one model call's request and the judging of its reply, for live and batch.
- `completions`: storing a reply's accepted pairs with the call's counters.
- `handoff`: moving the pairs a chunk could not make to chunks of the job with unused text.
- `retry`: backoff, and when the model counts as unreachable.
- `jobs`: create, prepare, plan, dispatch, cancel, retry a job.
- `chunks`: splitting sources into chunks.
- `rounds`: opening a batch-mode job's rounds.
- `sweeper`: re-queueing lost work.
- `review`: approving, rejecting and editing completions.

Celery is at the edge: these modules import `training.tasks` (`*_task`) at module level and
enqueue after commit; `training.tasks` imports them inside each task.
"""
from __future__ import annotations

from .chunks import chunks_ensure_for_conversation, chunks_ensure_for_document, user_turns
from .completions import store_completions
from .jobs import JobNotReady, job_cancel, job_create, job_prepare, job_retry, job_summary
from .review import completion_question_key, completion_review, completions_review_bulk
from .state import job_fail, job_finish_if_done, job_transition
from .sweeper import sweep

__all__ = [
    "JobNotReady",
    "chunks_ensure_for_conversation",
    "chunks_ensure_for_document",
    "completion_question_key",
    "completion_review",
    "completions_review_bulk",
    "job_cancel",
    "job_create",
    "job_fail",
    "job_finish_if_done",
    "job_prepare",
    "job_retry",
    "job_summary",
    "job_transition",
    "store_completions",
    "sweep",
    "user_turns",
]
