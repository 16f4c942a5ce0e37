"""The review back office: the completion admin, plus jobs, work items and chunks.

Every action is a call to a service, and services check workspace roles: only reviewers and
admins of a completion's workspace approve, reject, edit, regenerate, flag or resolve
duplicates, and only an agent's creator or an admin of its workspace assigns material to it or
cancels and retries a job, whatever their Django permissions (a superuser who is not a reviewer
of a workspace sees its completions but cannot approve them). Staff who are not superusers see
only the rows of their workspaces. Jobs, work items and chunks are read only here.

Editing (on the change page, or in the list: question, answer and status are editable in
place) goes through `services.completion_review`, which keeps the original text the first
time and marks the completion edited; `reviewed_by`/`reviewed_at` are recorded.

"Regenerate" rejects the selected completions and asks the model for as many new ones from
the same chunks (`review.completions_regenerate`; see there).
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

from django import forms
from django.contrib import admin, messages
from django.contrib.admin.helpers import ActionForm
from django.core.exceptions import ValidationError
from django.db.models import Prefetch, Q, QuerySet
from django.db.models.fields.json import KeyTransform
from django.http import HttpRequest, HttpResponse
from django.template.response import TemplateResponse
from django.utils.html import format_html_join

from agents.models import Agent
from agents.selectors import agents_for
from masscer.admin_common import ReadOnly, ReadOnlyAdmin
from masscer.views import id_or_none
from workspaces.permissions import NotAllowed
from workspaces.selectors import review_workspace_ids, visible_to, workspace_ids_of

from . import review, services
from .models import Assignment, Chunk, Completion, PromptTemplate, PromptTemplateVersion, TrainingJob, WorkItem
from .question_types import QUESTION_TYPES, type_filter
from .services.spans import span_label


@admin.register(TrainingJob)
class TrainingJobAdmin(ReadOnlyAdmin):
    """Jobs are read only here (statuses move only along the documented transitions, in the
    services); the actions cancel and retry through the services, as the job page does."""

    list_display = ["id", "workspace", "owner", "outcome", "requested_count", "created_count", "shortfall", "calls",
                    "judge", "created_at"]
    list_filter = ["status", "style", "model", "judge"]
    list_select_related = ["owner", "workspace"]
    raw_id_fields = ["owner", "workspace", "documents", "conversations", "agents"]
    readonly_fields = ["created_count", "calls", "prompt_tokens", "completion_tokens", "shortfall_reasons", "error"]
    actions = ["cancel", "retry"]

    @admin.display(description="Outcome", ordering="status")
    def outcome(self, job: TrainingJob) -> str:
        return job.outcome_label

    def _each(self, request: HttpRequest, jobs: QuerySet[TrainingJob], change: Callable[..., bool]) -> review.Outcome:
        outcome = review.Outcome()
        for job in jobs:
            try:
                outcome.done += change(actor=request.user, job=job)
            except NotAllowed:
                outcome.skip("only a job's creator or an admin of its workspace may do this", [job.pk])
        return outcome

    def _report(self, request: HttpRequest, verb: str, outcome: review.Outcome) -> None:
        self.message_user(request, f"{outcome.done} jobs {verb}.", messages.SUCCESS)
        for reason, ids in outcome.skipped.items():
            self.message_user(request, f"Skipped {len(ids)} ({reason}): {', '.join(map(str, ids))}", messages.ERROR)

    @admin.action(description="Cancel selected jobs")
    def cancel(self, request: HttpRequest, queryset: QuerySet[TrainingJob]) -> None:
        self._report(request, "cancelled", self._each(request, queryset, services.job_cancel))

    @admin.action(description="Retry selected jobs (what failed or fell short)")
    def retry(self, request: HttpRequest, queryset: QuerySet[TrainingJob]) -> None:
        self._report(request, "sent back to the workers", self._each(request, queryset, services.job_retry))


@admin.register(WorkItem)
class WorkItemAdmin(ReadOnlyAdmin):
    list_display = ["id", "job", "chunks", "quota", "made", "calls", "status", "lease_expires_at"]
    list_filter = ["status"]
    list_select_related = ["job", "chunk"]
    raw_id_fields = ["job", "chunk"]
    workspace_path = "job__workspace"

    @admin.display(description="chunks")
    def chunks(self, obj: WorkItem) -> str:
        # An item reads `span` chunks from its first one (`services.spans`).
        return f"{span_label(obj)} of {obj.chunk.source_label}"


@admin.register(Chunk)
class ChunkAdmin(ReadOnlyAdmin):
    list_display = ["id", "document", "conversation", "index", "token_count"]
    list_select_related = ["document", "conversation"]
    raw_id_fields = ["document", "conversation"]

    def scope(self, rows: QuerySet[Chunk], user: Any) -> QuerySet[Chunk]:
        # A chunk's workspace is its document's or its conversation's.
        mine = workspace_ids_of(user=user)
        return rows.filter(Q(document__workspace__in=mine) | Q(conversation__workspace__in=mine))


class PromptTemplateVersionInline(ReadOnly, admin.TabularInline):
    model = PromptTemplateVersion
    fields = ["number", "created_by", "created_at", "system", "user"]
    readonly_fields = fields
    extra = 0


@admin.register(PromptTemplate)
class PromptTemplateAdmin(ReadOnlyAdmin):
    """Templates and their versions, read only: they are written on the template pages and the API
    (`services.templates`), where the texts are checked and every save is a new version."""

    list_display = ["id", "name", "workspace", "owner", "agent", "is_default", "archived", "created_at"]
    list_filter = ["is_default", "archived"]
    list_select_related = ["workspace", "owner", "agent"]
    raw_id_fields = ["workspace", "owner", "agent"]
    inlines = [PromptTemplateVersionInline]


# --- completion filters --------------------------------------------------------------------


class AgentFilter(admin.SimpleListFilter):
    title = "agent"
    parameter_name = "agent"

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[int, str]]:
        rows = Agent.objects.all() if request.user.is_superuser else agents_for(user=request.user)
        return [(agent.pk, agent.name) for agent in rows.only("pk", "name").order_by("name", "id")[:200]]

    def queryset(self, request: HttpRequest, queryset: QuerySet[Completion]) -> QuerySet[Completion]:
        agent_id = id_or_none(self.value())
        return queryset.filter(assignments__agent_id=agent_id) if agent_id else queryset


class JobFilter(admin.SimpleListFilter):
    """The 30 latest jobs as links; any job by `?job=ID`."""

    title = "job"
    parameter_name = "job"

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[int, str]]:
        rows = TrainingJob.objects.all() if request.user.is_superuser else visible_to(
            TrainingJob.objects.all(), user=request.user
        )
        return [(pk, f"job {pk}") for pk in rows.order_by("-created_at", "-id").values_list("pk", flat=True)[:30]]

    def queryset(self, request: HttpRequest, queryset: QuerySet[Completion]) -> QuerySet[Completion]:
        job_id = id_or_none(self.value())
        return queryset.filter(job_id=job_id) if job_id else queryset


class SourceTypeFilter(admin.SimpleListFilter):
    title = "source type"
    parameter_name = "source_type"

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, str]]:
        return [("document", "Document"), ("conversation", "Conversation")]

    def queryset(self, request: HttpRequest, queryset: QuerySet[Completion]) -> QuerySet[Completion]:
        if self.value() == "document":
            return queryset.filter(chunk__document__isnull=False)
        if self.value() == "conversation":
            return queryset.filter(chunk__conversation__isnull=False)
        return queryset


class DuplicateFilter(admin.SimpleListFilter):
    title = "near-duplicate"
    parameter_name = "duplicate"

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, str]]:
        return [("flagged", "Flagged as a duplicate"), ("any", "In a duplicate group")]

    def queryset(self, request: HttpRequest, queryset: QuerySet[Completion]) -> QuerySet[Completion]:
        if self.value() == "flagged":
            return queryset.filter(duplicate_of__isnull=False)
        if self.value() == "any":
            heads = Completion.objects.filter(duplicate_of__isnull=False).values("duplicate_of_id")
            return queryset.filter(duplicate_of__isnull=False) | queryset.filter(pk__in=heads)
        return queryset


class JudgeFilter(admin.SimpleListFilter):
    title = "judge faithfulness"
    parameter_name = "judge_below"

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, str]]:
        return [(str(k), f"Below {k}") for k in (2, 3, 4, 5)] + [("none", "Not judged")]

    def queryset(self, request: HttpRequest, queryset: QuerySet[Completion]) -> QuerySet[Completion]:
        if self.value() == "none":
            return queryset.filter(judge__isnull=True)
        if self.value() in ("2", "3", "4", "5"):
            return queryset.filter(judge__faithfulness__lt=int(self.value() or 0))
        return queryset


class QuestionTypeFilter(admin.SimpleListFilter):
    title = "question type"
    parameter_name = "question_type"

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, str]]:
        return list(QUESTION_TYPES.items())

    def queryset(self, request: HttpRequest, queryset: QuerySet[Completion]) -> QuerySet[Completion]:
        if self.value() in QUESTION_TYPES:
            return queryset.filter(question_type__in=type_filter(self.value() or ""))
        return queryset


# --- the completion admin ----------------------------------------------------------------------


class CompletionActionForm(ActionForm):
    """The action bar: an agent for "assign", "unassign" and "find near-duplicates"."""

    agent = forms.ModelChoiceField(queryset=Agent.objects.all(), required=False, empty_label="(agent)")


class ReviewerCheck(forms.ModelForm):
    """Refuses an edit in a workspace where the user does not review (set per request)."""

    review_workspaces: set[int] = set()

    def clean(self) -> dict[str, Any]:
        cleaned = super().clean()
        if self.instance.pk and self.instance.job.workspace_id not in self.review_workspaces:
            raise forms.ValidationError("Only reviewers and admins of this workspace may edit or review it.")
        question = (cleaned.get("question") or "").strip()
        if self.instance.pk and question and "question" in self.changed_data:
            # The service refuses a question the job has already; say so on the field, not as a 500.
            try:
                services.completion_question_key(completion=self.instance, question=question)
            except ValidationError as exc:
                self.add_error("question", exc)
        return cleaned


def _reviewer_form(base: type[forms.ModelForm], request: HttpRequest) -> type[forms.ModelForm]:
    workspaces = review_workspace_ids(user=request.user)
    return type("ReviewerForm", (ReviewerCheck, base), {"review_workspaces": workspaces})


@admin.register(Completion)
class CompletionAdmin(admin.ModelAdmin):
    list_display = ["id", "question", "answer", "status", "source", "agent_names", "job", "model", "faithfulness",
                    "edited", "duplicate_of_id", "reviewed_by", "reviewed_at", "created_at"]
    list_display_links = ["id"]
    list_editable = ["question", "answer", "status"]
    list_filter = ["status", AgentFilter, JobFilter, SourceTypeFilter, "model", "created_at", "edited",
                   DuplicateFilter, JudgeFilter, QuestionTypeFilter]
    list_select_related = ["job", "chunk", "chunk__document", "chunk__conversation", "reviewed_by"]
    list_per_page = 50
    search_fields = ["question", "answer"]
    date_hierarchy = "created_at"
    fields = ["question", "answer", "status", "evidence", "source", "chunk_text", "agent_names", "job", "model",
              "question_type", "judge", "edited", "original_question", "original_answer", "redacted", "duplicate_of",
              "reviewed_by", "reviewed_at", "created_at"]
    readonly_fields = ["evidence", "source", "chunk_text", "agent_names", "job", "model", "question_type", "judge",
                       "edited", "original_question", "original_answer", "redacted", "duplicate_of", "reviewed_by",
                       "reviewed_at", "created_at"]
    action_form = CompletionActionForm
    actions = ["approve", "reject", "assign", "unassign", "regenerate", "flag_duplicates", "keep_one", "merge"]

    # --- reads

    def get_queryset(self, request: HttpRequest) -> QuerySet[Completion]:
        # All of list_select_related here: the changelist skips it when the queryset already selects some.
        rows = super().get_queryset(request).select_related(*self.list_select_related).defer("chunk__text")
        rows = rows.prefetch_related(
            Prefetch("assignments", queryset=Assignment.objects.select_related("agent").only("completion_id",
                                                                                             "agent__name"))
        )
        return rows if request.user.is_superuser else visible_to(rows, user=request.user, path="job__workspace")

    def get_object(self, request: HttpRequest, object_id: str, from_field: str | None = None) -> Completion | None:
        # The change page shows the chunk text, which the list defers.
        obj = super().get_object(request, object_id, from_field)
        if obj is not None:
            obj.chunk.refresh_from_db(fields=["text"])
        return obj

    @admin.display(description="source")
    def source(self, obj: Completion) -> str:
        chunk = obj.chunk
        source = chunk.document if chunk.document_id else chunk.conversation
        label = chunk.locator_label
        return f"{source}" + (f" ({label})" if label else "")

    @admin.display(description="faithfulness", ordering=KeyTransform("faithfulness", "judge"))
    def faithfulness(self, obj: Completion) -> int | None:
        return (obj.judge or {}).get("faithfulness")

    @admin.display(description="agents")
    def agent_names(self, obj: Completion) -> str:
        return ", ".join(assignment.agent.name for assignment in obj.assignments.all())

    @admin.display(description="chunk text")
    def chunk_text(self, obj: Completion) -> str:
        return format_html_join("", "<p>{}</p>", ((part,) for part in obj.chunk.text.split("\n\n")))

    def formfield_for_dbfield(self, db_field: Any, request: HttpRequest, **kwargs: Any) -> Any:
        if db_field.name in ("question", "answer"):
            kwargs["widget"] = forms.Textarea(attrs={"rows": 3, "cols": 40})
        return super().formfield_for_dbfield(db_field, request, **kwargs)

    # --- writes go through the services

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False  # completions come from jobs

    def has_change_permission(self, request: HttpRequest, obj: Completion | None = None) -> bool:
        if obj is not None and obj.job.workspace_id not in review_workspace_ids(user=request.user):
            return False
        return super().has_change_permission(request, obj)

    def has_delete_permission(self, request: HttpRequest, obj: Completion | None = None) -> bool:
        return False  # reject instead: the record stays

    def get_form(self, request: HttpRequest, obj: Completion | None = None, change: bool = False,
                 **kwargs: Any) -> type[forms.ModelForm]:
        return _reviewer_form(super().get_form(request, obj, change, **kwargs), request)

    def get_changelist_form(self, request: HttpRequest, **kwargs: Any) -> type[forms.ModelForm]:
        return _reviewer_form(super().get_changelist_form(request, **kwargs), request)

    def save_model(self, request: HttpRequest, obj: Completion, form: forms.ModelForm, change: bool) -> None:
        stored = Completion.objects.select_related("job").get(pk=obj.pk)
        try:
            services.completion_review(
                completion=stored, status=obj.status, reviewer=request.user, question=obj.question, answer=obj.answer
            )
        except ValidationError as exc:  # two rows of one list page edited into the same question
            self.message_user(request, f"Completion {obj.pk} not saved: {' '.join(exc.messages)}", messages.ERROR)

    def changelist_view(self, request: HttpRequest, extra_context: dict[str, Any] | None = None) -> HttpResponse:
        response = super().changelist_view(request, extra_context)
        # Offer only the agents the user can see in the action bar (validation accepts any
        # agent; the services check membership).
        if isinstance(response, TemplateResponse) and response.context_data.get("action_form"):
            response.context_data["action_form"].fields["agent"].queryset = agents_for(user=request.user)
        return response

    # --- actions

    def _report(self, request: HttpRequest, verb: str, outcome: review.Outcome) -> None:
        self.message_user(request, f"{outcome.done} completions {verb}.", messages.SUCCESS)
        for reason, ids in outcome.skipped.items():
            shown = ", ".join(str(pk) for pk in ids[:20]) + (" …" if len(ids) > 20 else "")
            self.message_user(request, f"Skipped {len(ids)} ({reason}): {shown}", messages.WARNING)

    def _review(self, request: HttpRequest, queryset: QuerySet[Completion], status: str) -> None:
        selected = list(queryset.values_list("pk", flat=True))
        count = services.completions_review_bulk(
            completions=Completion.objects.filter(pk__in=selected), status=status, reviewer=request.user
        )
        outcome = review.Outcome(done=count)
        if count < len(selected):
            allowed = review_workspace_ids(user=request.user)
            outcome.skip(
                "you are not a reviewer in their workspace",
                Completion.objects.filter(pk__in=selected).exclude(job__workspace__in=allowed).values_list(
                    "pk", flat=True
                ),
            )
        self._report(request, f"marked {status}", outcome)

    @admin.action(description="Approve selected completions")
    def approve(self, request: HttpRequest, queryset: QuerySet[Completion]) -> None:
        self._review(request, queryset, Completion.Status.APPROVED)

    @admin.action(description="Reject selected completions")
    def reject(self, request: HttpRequest, queryset: QuerySet[Completion]) -> None:
        self._review(request, queryset, Completion.Status.REJECTED)

    def _chosen_agent(self, request: HttpRequest) -> Agent | None:
        agent_id = id_or_none(request.POST.get("agent"))
        agent = agents_for(user=request.user).filter(pk=agent_id).first() if agent_id else None
        if agent is None:
            self.message_user(request, "Choose one of your agents in the action bar first.", messages.ERROR)
        return agent

    def _assignment(self, request: HttpRequest, queryset: QuerySet[Completion], change: Callable[..., Any],
                    verb: str) -> None:
        agent = self._chosen_agent(request)
        if agent is None:
            return
        ids = list(queryset.values_list("pk", flat=True))
        try:
            outcome = change(actor=request.user, completion_ids=ids, agent=agent)
        except NotAllowed as exc:
            self.message_user(request, str(exc), messages.ERROR)
            return
        self._report(request, f"{verb} {agent.name}", outcome)

    @admin.action(description="Assign selected to the chosen agent")
    def assign(self, request: HttpRequest, queryset: QuerySet[Completion]) -> None:
        self._assignment(request, queryset, review.completions_assign, "assigned to")

    @admin.action(description="Unassign selected from the chosen agent")
    def unassign(self, request: HttpRequest, queryset: QuerySet[Completion]) -> None:
        self._assignment(request, queryset, review.completions_unassign, "unassigned from")

    @admin.action(description="Regenerate selected (reject them and make as many new ones)")
    def regenerate(self, request: HttpRequest, queryset: QuerySet[Completion]) -> None:
        outcome = review.completions_regenerate(completions=queryset, reviewer=request.user)
        self._report(request, "rejected and sent for regeneration", outcome)

    @admin.action(description="Find near-duplicates in the material of the chosen agent (or the selected ones' agents)")
    def flag_duplicates(self, request: HttpRequest, queryset: QuerySet[Completion]) -> None:
        agent_id = id_or_none(request.POST.get("agent"))
        agents = agents_for(user=request.user)
        if agent_id:
            agents = agents.filter(pk=agent_id)
        else:
            agents = agents.filter(assignments__completion__in=queryset.values("pk")).distinct()
        for agent in agents:
            try:
                groups = review.duplicates_flag(actor=request.user, agent=agent)
            except NotAllowed as exc:
                self.message_user(request, f"{agent.name}: {exc}", messages.ERROR)
                continue
            flagged = sum(len(group) - 1 for group in groups)
            self.message_user(
                request, f"{agent.name}: {len(groups)} near-duplicate groups, {flagged} completions flagged.",
                messages.SUCCESS,
            )

    @admin.action(description="Near-duplicates: keep selected, reject the rest of each group")
    def keep_one(self, request: HttpRequest, queryset: QuerySet[Completion]) -> None:
        outcome = review.duplicates_keep_selected(completions=queryset, reviewer=request.user)
        self._report(request, "rejected as duplicates", outcome)

    @admin.action(description="Near-duplicates: merge into selected (move agents, reject the rest)")
    def merge(self, request: HttpRequest, queryset: QuerySet[Completion]) -> None:
        outcome = review.duplicates_keep_selected(completions=queryset, reviewer=request.user, merge=True)
        self._report(request, "merged and rejected as duplicates", outcome)
