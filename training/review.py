"""Review services beyond approve/reject: regenerate, near-duplicate flags, keep-one and merge,
and assignment with the workspace checks the admin and the API need.

Every write here checks roles the way `services.completion_review` does: only reviewers and
admins of a completion's workspace approve, reject, regenerate or resolve duplicates; any
member may attach material to an agent of the same workspace.
"""
from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from django.contrib.auth.models import AbstractBaseUser
from django.core.exceptions import PermissionDenied, ValidationError
from django.db import transaction
from django.db.models import F, QuerySet
from django.utils import timezone

from workspaces.models import Membership
from workspaces.selectors import can_review

from . import dedupe
from .models import Assignment, Completion, TrainingJob, WorkItem

Status = TrainingJob.Status


def review_workspace_ids(*, user: AbstractBaseUser) -> set[int]:
    """Workspaces where the user may approve and reject (one query, for bulk checks)."""
    if not user.is_authenticated:
        return set()
    return set(
        Membership.objects.filter(user=user, role__in=Membership.REVIEW_ROLES).values_list("workspace_id", flat=True)
    )


def member_workspace_ids(*, user: AbstractBaseUser) -> set[int]:
    if not user.is_authenticated:
        return set()
    return set(Membership.objects.filter(user=user).values_list("workspace_id", flat=True))


@dataclass
class Outcome:
    """What a bulk action did: how many rows changed, and the ids it left alone and why."""

    done: int = 0
    skipped: dict[str, list[int]] = field(default_factory=dict)

    def skip(self, reason: str, ids: Iterable[int]) -> None:
        ids = list(ids)
        if ids:
            self.skipped.setdefault(reason, []).extend(ids)

    @property
    def skipped_count(self) -> int:
        return sum(len(ids) for ids in self.skipped.values())

    def as_dict(self) -> dict[str, Any]:
        return {"done": self.done, "skipped": self.skipped}


# --- assignment --------------------------------------------------------------------------


def _assignable(user: AbstractBaseUser, completion_ids: Sequence[int], agent: Any, outcome: Outcome) -> list[int]:
    if agent.workspace_id not in member_workspace_ids(user=user):
        raise PermissionDenied("You are not a member of this agent's workspace.")
    rows = dict(Completion.objects.filter(pk__in=list(completion_ids)).values_list("pk", "job__workspace_id"))
    # One reason for both: ids of other workspaces must not be told apart from unknown ones.
    outcome.skip(
        "not found in the agent's workspace",
        [cid for cid in completion_ids if rows.get(cid) != agent.workspace_id],
    )
    return [cid for cid, ws in rows.items() if ws == agent.workspace_id]


@transaction.atomic
def completions_assign_checked(*, user: AbstractBaseUser, completion_ids: Sequence[int], agent: Any) -> Outcome:
    """Attach completions to an agent; only those in the agent's workspace, by one of its members."""
    outcome = Outcome()
    ids = _assignable(user, completion_ids, agent, outcome)
    already = Assignment.objects.filter(agent=agent, completion_id__in=ids).values_list("completion_id", flat=True)
    existing = set(already)
    Assignment.objects.bulk_create(
        [Assignment(completion_id=cid, agent=agent) for cid in ids if cid not in existing], ignore_conflicts=True
    )
    outcome.done = len([cid for cid in ids if cid not in existing])
    outcome.skip("already assigned", sorted(existing))
    return outcome


@transaction.atomic
def completions_unassign_checked(*, user: AbstractBaseUser, completion_ids: Sequence[int], agent: Any) -> Outcome:
    outcome = Outcome()
    ids = _assignable(user, completion_ids, agent, outcome)
    outcome.done, _ = Assignment.objects.filter(agent=agent, completion_id__in=ids).delete()
    return outcome


# --- regenerate ----------------------------------------------------------------------------


@transaction.atomic
def completions_regenerate(*, completions: QuerySet[Completion], reviewer: AbstractBaseUser) -> Outcome:
    """Reject the given completions and ask the model for as many new ones from the same chunks.

    The rejected rows stay (with who rejected them and when): the job's duplicate check sees
    their questions, so the model is not given the same ones back. Each affected work item gets
    its quota raised by the number rejected from it and goes back to the workers; its job
    returns to `generating` and its requested count grows by the same number, so a completed
    job still accounts for every completion it holds. Jobs still running or cancelled are left
    alone (retry or wait for them instead).
    """
    outcome = Outcome()
    allowed = review_workspace_ids(user=reviewer)
    rows = list(completions.values_list("pk", "job_id", "chunk_id", "status", "job__status", "job__workspace_id"))
    outcome.skip("you are not a reviewer in its workspace", [r[0] for r in rows if r[5] not in allowed])
    rows = [r for r in rows if r[5] in allowed]
    outcome.skip("already rejected", [r[0] for r in rows if r[3] == Completion.Status.REJECTED])
    outcome.skip(
        "its job is still running or was cancelled",
        [r[0] for r in rows if r[3] != Completion.Status.REJECTED and r[4] not in (Status.COMPLETED, Status.FAILED)],
    )
    rows = [r for r in rows if r[3] != Completion.Status.REJECTED and r[4] in (Status.COMPLETED, Status.FAILED)]
    by_item: dict[tuple[int, int], int] = defaultdict(int)
    for _, job_id, chunk_id, *_ in rows:
        by_item[(job_id, chunk_id)] += 1
    now = timezone.now()
    Completion.objects.filter(pk__in=[r[0] for r in rows]).update(
        status=Completion.Status.REJECTED, reviewed_by=reviewer, reviewed_at=now
    )
    _requeue(by_item, now)
    outcome.done = len(rows)
    return outcome


def _requeue(by_item: dict[tuple[int, int], int], now: Any) -> None:
    from .tasks import generate_task

    # Both moves are documented transitions (completed/failed → generating, as for retry).
    assert all(Status.GENERATING in TrainingJob.TRANSITIONS[s] for s in (Status.COMPLETED, Status.FAILED))
    per_job: dict[int, int] = defaultdict(int)
    for (job_id, _), count in by_item.items():
        per_job[job_id] += count
    for job_id, count in per_job.items():
        TrainingJob.objects.filter(pk=job_id, status__in=[Status.COMPLETED, Status.FAILED]).update(
            status=Status.GENERATING,
            requested_count=F("requested_count") + count,
            error="",
            finished_at=None,
            shortfall=0,
        )
    item_ids: list[int] = []
    for (job_id, chunk_id), count in by_item.items():
        item = WorkItem.objects.filter(job_id=job_id, chunk_id=chunk_id).only("pk").first()
        if item is None:
            continue
        WorkItem.objects.filter(pk=item.pk).update(
            quota=F("quota") + count,
            status=WorkItem.Status.PENDING,
            calls=0,
            error="",
            reasons={},
            samples=[],
            unavailable_since=None,
            enqueued_at=now,
        )
        item_ids.append(item.pk)
    for item_id in item_ids:
        generate_task.delay_on_commit(item_id)


# --- near-duplicates -------------------------------------------------------------------------


def agent_material(*, agent: Any) -> QuerySet[Completion]:
    """The agent's pending and approved completions (rejected ones are not material)."""
    return Completion.objects.filter(assignments__agent=agent).exclude(status=Completion.Status.REJECTED)


def _canonical(members: list[int], info: dict[int, tuple[str, bool]]) -> int:
    # Keep what a reviewer already vouched for: approved first, then edited, then the oldest.
    return min(members, key=lambda pk: (info[pk][0] != Completion.Status.APPROVED, not info[pk][1], pk))


@transaction.atomic
def duplicates_flag(*, agent: Any, threshold: float = dedupe.JACCARD_THRESHOLD) -> list[list[int]]:
    """Find near-duplicates in the agent's material and set `duplicate_of` to each group's keeper.

    Flags on the agent's material are recomputed from scratch. Returns the groups, keeper first.
    """
    material = agent_material(agent=agent)
    texts = material.values_list("pk", "question", "answer").order_by("pk").iterator(chunk_size=2000)
    groups = dedupe.near_duplicate_groups(texts, threshold=threshold)
    Completion.objects.filter(pk__in=material.values("pk"), duplicate_of__isnull=False).update(duplicate_of=None)
    info = {
        pk: (status, edited)
        for pk, status, edited in Completion.objects.filter(pk__in=[pk for g in groups for pk in g]).values_list(
            "pk", "status", "edited"
        )
    }
    ordered: list[list[int]] = []
    for members in groups:
        keeper = _canonical(members, info)
        Completion.objects.filter(pk__in=[pk for pk in members if pk != keeper]).update(duplicate_of_id=keeper)
        ordered.append([keeper, *[pk for pk in members if pk != keeper]])
    return ordered


def duplicate_group(completion: Completion) -> list[Completion]:
    """The completion's group: its keeper and every completion flagged as a duplicate of it."""
    head_id = completion.duplicate_of_id or completion.pk
    return list(Completion.objects.filter(pk=head_id) | Completion.objects.filter(duplicate_of_id=head_id))


@transaction.atomic
def duplicates_keep_one(*, keep: Completion, reviewer: AbstractBaseUser, merge: bool = False) -> Outcome:
    """Keep `keep`, reject the rest of its duplicate group.

    With `merge`, the others' agent assignments move to the kept completion first (with their
    rule and tags, unless the kept one already has that agent), so no agent loses material.
    The rejected ones keep `duplicate_of` pointing at the kept one, for the record.
    """
    if not can_review(user=reviewer, workspace_id=keep.job.workspace_id):
        raise PermissionDenied("Only reviewers and admins of this workspace may resolve duplicates.")
    keep.refresh_from_db(fields=["duplicate_of"])
    group = duplicate_group(keep)
    if len(group) < 2:
        raise ValidationError("This completion is not flagged as a near-duplicate of anything.", code="no_group")
    outcome = Outcome()
    others = [c.pk for c in group if c.pk != keep.pk and c.job.workspace_id == keep.job.workspace_id]
    outcome.skip("in another workspace", [c.pk for c in group if c.pk != keep.pk and c.pk not in others])
    if merge:
        _move_assignments(others, keep)
    now = timezone.now()
    outcome.done = Completion.objects.filter(pk__in=others).update(
        status=Completion.Status.REJECTED, reviewed_by=reviewer, reviewed_at=now, duplicate_of=keep
    )
    Completion.objects.filter(pk=keep.pk).update(duplicate_of=None)
    keep.refresh_from_db()
    return outcome


def _move_assignments(from_ids: list[int], keep: Completion) -> None:
    held = set(Assignment.objects.filter(completion=keep).values_list("agent_id", flat=True))
    moved = []
    for assignment in Assignment.objects.filter(completion_id__in=from_ids).order_by("pk"):
        if assignment.agent_id not in held:
            held.add(assignment.agent_id)
            moved.append(Assignment(completion=keep, agent_id=assignment.agent_id, rule=assignment.rule,
                                    tags=assignment.tags))
    Assignment.objects.filter(completion_id__in=from_ids).delete()
    Assignment.objects.bulk_create(moved)


def duplicates_keep_selected(
    *, completions: QuerySet[Completion], reviewer: AbstractBaseUser, merge: bool = False
) -> Outcome:
    """Keep each selected completion and reject the rest of its group (the admin's bulk action)."""
    outcome = Outcome()
    allowed = review_workspace_ids(user=reviewer)
    seen_heads: set[int] = set()
    for completion in completions.select_related("job").order_by("pk"):
        head = completion.duplicate_of_id or completion.pk
        if completion.job.workspace_id not in allowed:
            outcome.skip("you are not a reviewer in its workspace", [completion.pk])
        elif head in seen_heads:
            outcome.skip("another completion of its group was kept", [completion.pk])
        else:
            try:
                done = duplicates_keep_one(keep=completion, reviewer=reviewer, merge=merge)
            except ValidationError:
                outcome.skip("not flagged as a near-duplicate", [completion.pk])
                continue
            seen_heads.add(head)
            outcome.done += done.done
    return outcome
