"""Review services beyond approve/reject: regenerate, near-duplicate flags, keep-one and merge,
and assignment of completions to agents (the one way every door attaches material).

Every write here checks roles with `workspaces.permissions`: only reviewers and admins of a
completion's workspace regenerate, flag or resolve duplicates; attaching material to an agent,
or taking it away, changes the agent, so it is for the agent's creator or a workspace admin.
"""
from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from django.contrib.auth.models import AbstractBaseUser
from django.core.exceptions import ValidationError
from django.db import transaction
from django.db.models import F, QuerySet
from django.utils import timezone

from workspaces.permissions import require_change, require_review
from workspaces.selectors import review_workspace_ids

from . import dedupe
from .models import Assignment, Completion, TrainingJob, WorkItem
from .selectors import agent_material
from .tasks import generate_task

if TYPE_CHECKING:
    from agents.models import Agent

Status = TrainingJob.Status


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

# Ids per query: "all matching the filters" can be tens of thousands, over SQLite's parameter limit.
ASSIGN_BATCH = 500


def _batches(ids: Sequence[int]) -> list[Sequence[int]]:
    return [ids[start : start + ASSIGN_BATCH] for start in range(0, len(ids), ASSIGN_BATCH)]


def require_material_change(*, actor: AbstractBaseUser, agent: Agent) -> None:
    """Attaching completions to an agent, or taking them away, changes the agent: every way of
    doing it (the agent's page, the API, the admin, a job's target agents) asks this."""
    require_change(user=actor, obj=agent, action="change its material")


def _in_workspace(completion_ids: Sequence[int], agent: Agent, outcome: Outcome) -> list[int]:
    """The ids among `completion_ids` of completions in the agent's workspace; the rest are skipped."""
    wanted = list(dict.fromkeys(completion_ids))
    found: set[int] = set()
    for batch in _batches(wanted):
        rows = Completion.objects.filter(pk__in=batch, job__workspace_id=agent.workspace_id)
        found.update(rows.values_list("pk", flat=True))
    # One reason for both: ids of other workspaces must not be told apart from unknown ones.
    outcome.skip("not found in the agent's workspace", [cid for cid in wanted if cid not in found])
    return [cid for cid in wanted if cid in found]


def _attach(ids: Sequence[int], agent: Agent, outcome: Outcome) -> None:
    for batch in _batches(ids):
        existing = set(
            Assignment.objects.filter(agent=agent, completion_id__in=batch).values_list("completion_id", flat=True)
        )
        new = [cid for cid in batch if cid not in existing]
        Assignment.objects.bulk_create([Assignment(completion_id=cid, agent=agent) for cid in new],
                                       ignore_conflicts=True)
        outcome.done += len(new)
        outcome.skip("already assigned", sorted(existing))


def _detach(ids: Sequence[int], agent: Agent) -> int:
    return sum(Assignment.objects.filter(agent=agent, completion_id__in=batch).delete()[0] for batch in _batches(ids))


@transaction.atomic
def completions_assign(*, actor: AbstractBaseUser, completion_ids: Sequence[int], agent: Agent) -> Outcome:
    """Attach completions of the agent's workspace to it (its creator or a workspace admin)."""
    require_material_change(actor=actor, agent=agent)
    outcome = Outcome()
    _attach(_in_workspace(completion_ids, agent, outcome), agent, outcome)
    return outcome


@transaction.atomic
def completions_unassign(*, actor: AbstractBaseUser, completion_ids: Sequence[int], agent: Agent) -> Outcome:
    require_material_change(actor=actor, agent=agent)
    outcome = Outcome()
    outcome.done = _detach(_in_workspace(completion_ids, agent, outcome), agent)
    return outcome


@transaction.atomic
def completions_move(
    *, actor: AbstractBaseUser, completion_ids: Sequence[int], source: Agent, target: Agent
) -> Outcome:
    """Attach completions to `target` and detach them from `source`; `done` counts those moved.

    Both agents change, so the user must be allowed to change both.
    """
    require_material_change(actor=actor, agent=source)
    require_material_change(actor=actor, agent=target)
    if source.workspace_id != target.workspace_id:
        raise ValidationError("Material moves only between agents of the same workspace.")
    outcome = Outcome()
    ids = _in_workspace(completion_ids, source, outcome)
    _attach(ids, target, Outcome())
    outcome.done = _detach(ids, source)
    return outcome


# --- context rules ---------------------------------------------------------------------------

MAX_TAGS = 20
TAG_CHARS = 50


def rule_tags_clean(tags: Iterable[str] | str) -> list[str]:
    """Tags as stored on an assignment: stripped, blanks and repeats (any case) dropped; a string
    is split at commas, as typed in a form."""
    if isinstance(tags, str):
        tags = tags.split(",")
    cleaned: dict[str, str] = {}
    for tag in tags:
        text = str(tag).strip()
        if len(text) > TAG_CHARS:
            raise ValidationError(f"A tag has at most {TAG_CHARS} characters: '{text[:TAG_CHARS]}…'.")
        if text:
            cleaned.setdefault(text.lower(), text)
    if len(cleaned) > MAX_TAGS:
        raise ValidationError(f"At most {MAX_TAGS} tags per completion.")
    return list(cleaned.values())


@transaction.atomic
def assignments_set_rule(
    *, actor: AbstractBaseUser, agent: Agent, completion_ids: Sequence[int], rule: str, tags: Iterable[str] | str = ()
) -> Outcome:
    """Set how the agent uses some of its material in its context: `retrieve` (when relevant),
    `always`, or `tags` (when the conversation carries one of `tags`). It changes the agent, so
    it is for its creator or a workspace admin, like attaching the material.

    Tags are kept with any rule (a completion can be tagged before its rule says "tags"); the
    `tags` rule needs at least one. Ids not assigned to the agent are skipped and reported.
    """
    require_material_change(actor=actor, agent=agent)
    if rule not in Assignment.Rule.values:
        raise ValidationError(f"Unknown rule '{rule}'; use one of {', '.join(Assignment.Rule.values)}.")
    cleaned = rule_tags_clean(tags)
    if rule == Assignment.Rule.TAGS and not cleaned:
        raise ValidationError("The 'tags' rule needs at least one tag.")
    outcome = Outcome()
    wanted = list(dict.fromkeys(completion_ids))
    for batch in _batches(wanted):
        rows = Assignment.objects.filter(agent=agent, completion_id__in=batch)
        found = set(rows.values_list("completion_id", flat=True))
        outcome.skip("not assigned to this agent", [cid for cid in batch if cid not in found])
        outcome.done += rows.update(rule=rule, tags=cleaned)
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
    # A completion whose work item is gone (only made by hand) is rejected without a new one.
    makers = _items_of([r[0] for r in rows])
    by_item: dict[tuple[int, int], int] = defaultdict(int)
    for pk, job_id, *_ in rows:
        if pk in makers:
            by_item[(job_id, makers[pk])] += 1
    now = timezone.now()
    Completion.objects.filter(pk__in=[r[0] for r in rows]).update(
        status=Completion.Status.REJECTED, reviewed_by=reviewer, reviewed_at=now
    )
    _requeue(by_item, now)
    outcome.done = len(rows)
    return outcome


def _requeue(by_item: dict[tuple[int, int], int], now: Any) -> None:
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
    for (_, item_id), count in by_item.items():
        WorkItem.objects.filter(pk=item_id).update(quota=F("quota") + count, **WorkItem.fresh_start(now))
        generate_task.delay_on_commit(item_id)


def _items_of(completion_ids: Sequence[int]) -> dict[int, int]:
    """The work item that made each completion: of its job and question type, the one whose
    span of chunks holds the completion's chunk (completions made before question types have
    none: their chunk's item). Completions whose item is gone are left out."""
    found: dict[int, int] = {}
    source = ("chunk__document_id", "chunk__conversation_id", "chunk__source_version")
    for batch in _batches(list(completion_ids)):
        rows = list(
            Completion.objects.filter(pk__in=batch).values_list(
                "pk", "job_id", "question_type", *source, "chunk__index"
            )
        )
        spans: dict[tuple[Any, ...], list[tuple[int, int, str, int]]] = defaultdict(list)
        items = WorkItem.objects.filter(job_id__in={row[1] for row in rows}).values_list(
            "pk", "job_id", "question_type", *source, "chunk__index", "span"
        )
        for pk, job_id, question_type, *where, first, span in items:
            spans[(job_id, *where)].append((first, span, question_type, pk))
        for pk, job_id, question_type, *where, index in rows:
            for first, span, item_type, item_id in spans[(job_id, *where)]:
                if first <= index < first + span and question_type in ("", item_type):
                    found[pk] = item_id
                    break
    return found


# --- near-duplicates -------------------------------------------------------------------------


def _canonical(members: list[int], info: dict[int, tuple[str, bool]]) -> int:
    # Keep what a reviewer already vouched for: approved first, then edited, then the oldest.
    return min(members, key=lambda pk: (info[pk][0] != Completion.Status.APPROVED, not info[pk][1], pk))


@transaction.atomic
def duplicates_flag(
    *, actor: AbstractBaseUser, agent: Agent, threshold: float = dedupe.JACCARD_THRESHOLD
) -> list[list[int]]:
    """Find near-duplicates in the agent's material and set `duplicate_of` to each group's keeper
    (reviewers and admins of the agent's workspace).

    Flags on the agent's material are recomputed from scratch. Returns the groups, keeper first.
    """
    require_review(user=actor, workspace_id=agent.workspace_id, action="flag near-duplicates")
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
    require_review(user=reviewer, workspace_id=keep.job.workspace_id, action="resolve duplicates")
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
