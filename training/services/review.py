"""Reviewing completions: approve, reject or edit one, or many at once (reviewers and admins only).

Regeneration, duplicate clean-up and assignment to agents live in `training.review`.
"""
from __future__ import annotations

from typing import Any

from django.contrib.auth.models import AbstractBaseUser
from django.core.exceptions import PermissionDenied, ValidationError
from django.db import IntegrityError, transaction
from django.db.models import Q, QuerySet
from django.utils import timezone

from workspaces.models import Membership
from workspaces.selectors import can_review

from ..models import Completion
from ..validation import KEY_SUFFIX, question_key, same_question


def _require_reviewer(user: AbstractBaseUser, workspace_id: int) -> None:
    if not can_review(user=user, workspace_id=workspace_id):
        raise PermissionDenied("Only reviewers and admins of this workspace may approve or reject completions.")


def completion_review(
    *, completion: Completion, status: str, reviewer: AbstractBaseUser, question: str = "", answer: str = ""
) -> Completion:
    if status not in Completion.Status.values:
        raise ValidationError(f"Unknown status {status!r}.")
    _require_reviewer(reviewer, completion.job.workspace_id)
    fields: dict[str, Any] = {"status": status, "reviewed_by": reviewer, "reviewed_at": timezone.now()}
    if question.strip() and answer.strip() and (question != completion.question or answer != completion.answer):
        if not completion.edited:
            fields["original_question"] = completion.question
            fields["original_answer"] = completion.answer
        fields.update(question=question.strip(), answer=answer.strip(), edited=True)
        key = completion_question_key(completion=completion, question=question.strip())
        if key is not None:
            fields["question_key"] = key
    try:
        with transaction.atomic():
            Completion.objects.filter(pk=completion.pk).update(**fields)
    except IntegrityError as exc:  # another edit gave a completion of the job this question meanwhile
        raise _question_taken(None) from exc
    completion.refresh_from_db()
    return completion


def completion_question_key(*, completion: Completion, question: str) -> str | None:
    """The question key an edit of `completion` to `question` stores; None when it is the same
    question (up to case and spacing: the key stays). A ValidationError when another completion
    of its job asks that question already (every door shows it; the admin's form checks first).
    """
    key = question_key(question)
    if same_question(key, completion.question_key):
        return None
    # Repeats stored before keys were unique carry a suffix (migration 0008): they count too.
    taken = Completion.objects.filter(Q(question_key=key) | Q(question_key__startswith=key + KEY_SUFFIX))
    other = taken.filter(job_id=completion.job_id).exclude(pk=completion.pk).values_list("pk", flat=True).first()
    if other is not None:
        raise _question_taken(other)
    return key


def _question_taken(other: int | None) -> ValidationError:
    which = f"completion #{other}" if other is not None else "another completion"
    return ValidationError(
        f"This job already has this question ({which}; compared ignoring case and spacing). "
        "Word it differently, or reject this completion instead.",
        code="duplicate_question",
    )


def completions_review_bulk(*, completions: QuerySet[Completion], status: str, reviewer: AbstractBaseUser) -> int:
    """Approve or reject many at once; only rows in workspaces where the user reviews are touched."""
    if status not in Completion.Status.values:
        raise ValidationError(f"Unknown status {status!r}.")
    allowed = Membership.objects.filter(user=reviewer, role__in=Membership.REVIEW_ROLES).values("workspace_id")
    return Completion.objects.filter(pk__in=completions.values("pk"), job__workspace__in=allowed).update(
        status=status, reviewed_by=reviewer, reviewed_at=timezone.now()
    )


