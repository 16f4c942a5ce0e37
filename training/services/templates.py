"""Prompt templates per workspace (overridable per agent and per job) and seed examples (#15.3).

A template (`PromptTemplate`) has a name in its workspace and numbered versions
(`PromptTemplateVersion`) that are never changed: saving new texts makes the next version, and a
job records the exact version it used. The texts are checked on every save
(`masscer.lib.llm.prompts.template_errors`: known placeholders only, {source} and {count} in the
user template, no fence tags), and can be tried on a real chunk before saving (`template_preview`).

Which template a new job uses (`template_for_job`): the one it names, else its agents' template,
else the workspace default, else none (the built-in prompt, itself the default template).

Rules (`workspaces.permissions`): any member makes templates in the workspace; a template's
creator or an admin saves new versions, archives or deletes it; only admins choose the workspace
default (it changes everyone's jobs); making a template the default of an agent's jobs changes
the agent, so it takes the right to change the agent. Outsiders never get here: the doors look
templates up among the user's workspaces and answer 404.
"""
from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from django.conf import settings
from django.contrib.auth.models import AbstractBaseUser
from django.core.exceptions import ValidationError
from django.db import IntegrityError, transaction
from django.db.models import F, Max, QuerySet

from conversations.models import Conversation
from documents.models import Document
from masscer import endpoint
from masscer.lib import llm
from masscer.lib.llm import prompts
from masscer.lib.tokens import chunk_pages
from workspaces.permissions import require_admin, require_change
from workspaces.selectors import visible_to
from workspaces.services import workspace_for_write

from ..models import Assignment, Chunk, Completion, PromptTemplate, PromptTemplateVersion
from ..previews import PER_PAGE, conversation_preview

if TYPE_CHECKING:
    from agents.models import Agent
    from workspaces.models import Workspace

    from ..models import TrainingJob

NAME_CHARS = PromptTemplate._meta.get_field("name").max_length or 100
MAX_TEMPLATE_CHARS = 20_000
# Seed examples a preview shows when an agent is chosen (a job shows its own `seed_examples`).
PREVIEW_EXAMPLES = 3

Example = tuple[str, str, str]


# --- checks -------------------------------------------------------------------------------------


def template_check(*, system: str, user: str) -> tuple[str, str]:
    """The texts as stored (line ends normalised), or a ValidationError by field naming each problem."""
    system, user = _normalised(system), _normalised(user)
    errors: dict[str, list[str]] = {}
    for field, text in (("system", system), ("user", user)):
        if len(text) > MAX_TEMPLATE_CHARS or "\x00" in text:
            errors[field] = [f"The {field} template must be at most {MAX_TEMPLATE_CHARS:,} characters, without NUL."]
    for field, messages in prompts.template_errors(system=system, user=user).items():
        errors.setdefault(field, []).extend(messages)
    if errors:
        raise ValidationError(errors, code="template")
    return system, user


def _normalised(text: str) -> str:
    # Browsers send CRLF from a textarea; paragraphs of a template are split at blank lines.
    return (text or "").replace("\r\n", "\n").replace("\r", "\n").strip("\n")


def _check_name(name: str) -> str:
    name = " ".join((name or "").split())
    if not name or len(name) > NAME_CHARS or "\x00" in name:
        raise ValidationError({"name": [f"Give the template a name of 1 to {NAME_CHARS} characters."]}, code="name")
    return name


def _check_agent(*, actor: AbstractBaseUser, workspace_id: int, agent: Agent | None) -> None:
    if agent is None:
        return
    if agent.workspace_id != workspace_id:
        raise ValidationError({"agent": ["The agent must be in the template's workspace."]}, code="agent")
    require_change(user=actor, obj=agent, action="choose the prompt template of its jobs")


# --- writes -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Roles:
    """What a template is the default for: the workspace's jobs, and/or one agent's jobs."""

    is_default: bool = False
    agent: Agent | None = None


@transaction.atomic
def template_create(
    *,
    actor: AbstractBaseUser,
    workspace: Workspace,
    name: str,
    system: str,
    user: str,
    roles: Roles = Roles(),
) -> PromptTemplate:
    """A new template with its first version (any member of the workspace)."""
    workspace = workspace_for_write(user=actor, workspace=workspace)
    name = _check_name(name)
    system, user = template_check(system=system, user=user)
    taken = ValidationError({"name": [f"This workspace has a template named {name!r} already."]}, code="name")
    if PromptTemplate.objects.filter(workspace=workspace, name=name, archived=False).exists():
        raise taken
    try:
        with transaction.atomic():  # a savepoint: the same name saved at the same moment is refused too
            template = PromptTemplate.objects.create(workspace=workspace, owner=actor, name=name)
    except IntegrityError:
        raise taken from None
    PromptTemplateVersion.objects.create(template=template, number=1, system=system, user=user, created_by=actor)
    _set_roles(actor=actor, template=template, roles=roles)
    return template


@transaction.atomic
def template_save(
    *,
    actor: AbstractBaseUser,
    template: PromptTemplate,
    system: str,
    user: str,
    roles: Roles | None = None,
) -> PromptTemplateVersion:
    """Save new texts as the next version (unchanged texts make none) and, unless None, the
    template's roles (its creator or an admin). Returns the current version."""
    require_change(user=actor, obj=template, action="change it")
    system, user = template_check(system=system, user=user)
    # The row lock orders concurrent saves, so each gets its own number.
    template = PromptTemplate.objects.select_for_update().get(pk=template.pk)
    if template.archived:
        raise ValidationError("This template is archived; make a new one.", code="archived")
    current = template_current(template)
    if current is None or (current.system, current.user) != (system, user):
        number = (current.number if current else 0) + 1
        current = PromptTemplateVersion.objects.create(
            template=template, number=number, system=system, user=user, created_by=actor
        )
    if roles is not None:
        _set_roles(actor=actor, template=template, roles=roles)
    return current


@transaction.atomic
def template_set_roles(*, actor: AbstractBaseUser, template: PromptTemplate, roles: Roles) -> None:
    """Make the template the workspace default or an agent's, or neither (its creator or an admin)."""
    require_change(user=actor, obj=template, action="change it")
    if template.archived:
        raise ValidationError("This template is archived; make a new one.", code="archived")
    _set_roles(actor=actor, template=template, roles=roles)


def _set_roles(*, actor: AbstractBaseUser, template: PromptTemplate, roles: Roles) -> None:
    """Make the template the workspace default and/or its agent's, taking the role from any other."""
    agent, is_default = roles.agent, roles.is_default
    if is_default != template.is_default:
        require_admin(user=actor, workspace_id=template.workspace_id, action="choose the default prompt template")
    if agent is not None and agent.pk != template.agent_id:
        _check_agent(actor=actor, workspace_id=template.workspace_id, agent=agent)
    if template.agent_id and (agent is None or agent.pk != template.agent_id):
        _check_agent(actor=actor, workspace_id=template.workspace_id, agent=template.agent)
    # One role change per workspace at a time: two admins choosing a default at once would
    # otherwise both clear the old one and then clash on the one-default constraint.
    list(PromptTemplate.objects.select_for_update().filter(workspace_id=template.workspace_id).values_list("pk"))
    others = PromptTemplate.objects.filter(workspace_id=template.workspace_id, archived=False).exclude(pk=template.pk)
    if is_default:
        others.filter(is_default=True).update(is_default=False)
    if agent is not None:
        others.filter(agent=agent).update(agent=None)
    PromptTemplate.objects.filter(pk=template.pk).update(is_default=is_default, agent=agent)
    template.is_default, template.agent = is_default, agent


@transaction.atomic
def template_delete(*, actor: AbstractBaseUser, template: PromptTemplate) -> str:
    """Delete a template no job used; archive one that jobs used (they keep their version).
    Returns "deleted" or "archived"."""
    require_change(user=actor, obj=template, action="delete it")
    if template.versions.filter(jobs__isnull=False).exists():
        PromptTemplate.objects.filter(pk=template.pk).update(archived=True, is_default=False, agent=None)
        return "archived"
    template.delete()
    return "deleted"


# --- reads --------------------------------------------------------------------------------------


def templates_for(*, user: AbstractBaseUser, archived: bool | None = False) -> QuerySet[PromptTemplate]:
    """The templates of the user's workspaces (live, archived or with None both), with their
    current version number."""
    rows = PromptTemplate.objects.all() if archived is None else PromptTemplate.objects.filter(archived=archived)
    rows = visible_to(rows, user=user)
    return rows.select_related("workspace", "owner", "agent").annotate(current=Max("versions__number"))


def template_current(template: PromptTemplate) -> PromptTemplateVersion | None:
    return template.versions.order_by("-number").first()


def template_for_job(
    *, workspace: Workspace, name: str, agents: Sequence[Agent]
) -> PromptTemplateVersion | None:
    """The template version a new job uses: `name` in `workspace` (ValidationError when there is
    none), else the job's agents' template, else the workspace default; None: the built-in prompt."""
    live = PromptTemplate.objects.filter(workspace=workspace, archived=False)
    if name:
        chosen = live.filter(name=name).first()
        if chosen is None:
            raise ValidationError(f"There is no prompt template named {name!r} in this workspace.", code="template")
        return template_current(chosen)
    by_agent = {row.agent_id: row for row in live.filter(agent__in=[agent.pk for agent in agents])}
    for agent in agents:  # the first agent named wins
        if agent.pk in by_agent:
            return template_current(by_agent[agent.pk])
    default = live.filter(is_default=True).first()
    return template_current(default) if default is not None else None


def template_choices(workspace: Workspace | int) -> list[tuple[str, str]]:
    """The Train dialog's choices: ("", automatic) then each live template by name."""
    workspace_id = workspace if isinstance(workspace, int) else workspace.pk
    rows = (
        PromptTemplate.objects.filter(workspace_id=workspace_id, archived=False)
        .select_related("agent")
        .annotate(current=Max("versions__number"))
        .order_by("name", "id")
    )
    choices = [("", "Automatic: the agent's template, else the workspace default, else the built-in prompt")]
    for row in rows:
        roles = ["workspace default"] if row.is_default else []
        if row.agent is not None:
            roles.append(f"for {row.agent.name}")
        label = f"{row.name} v{row.current}" + (f" ({', '.join(roles)})" if roles else "")
        choices.append((row.name, label))
    return choices


def seed_examples_for(job: TrainingJob) -> tuple[Example, ...]:
    """Up to `job.seed_examples` approved completions of the job's agents, as (q, a, evidence):
    most recently reviewed first, from the job's workspace, none of the job's own."""
    if job.seed_examples <= 0:
        return ()
    agent_ids = list(job.agents.values_list("pk", flat=True))
    return approved_examples(
        workspace_id=job.workspace_id, agent_ids=agent_ids, limit=job.seed_examples, exclude_job_id=job.pk
    )


def approved_examples(
    *, workspace_id: int, agent_ids: Iterable[int], limit: int, exclude_job_id: int | None = None
) -> tuple[Example, ...]:
    assigned = Assignment.objects.filter(agent_id__in=list(agent_ids)).values("completion_id")
    rows = Completion.objects.filter(
        pk__in=assigned, status=Completion.Status.APPROVED, job__workspace_id=workspace_id
    ).exclude(job_id=exclude_job_id)
    ordered = rows.order_by(F("reviewed_at").desc(nulls_last=True), "-created_at", "-id")
    return tuple(ordered.values_list("question", "answer", "evidence")[:limit])


# --- preview ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Preview:
    """The messages a job's first call would send for a chunk, and which chunk it is."""

    system: str
    user: str
    chunk_label: str
    chunks: int


def template_preview(
    *,
    workspace: Workspace,
    system: str,
    user: str,
    document: Document | None = None,
    conversation: Conversation | None = None,
    index: int = 0,
    agent: Agent | None = None,
    question_type: str = "factual",
    audience: str = "",
    difficulty: str = "",
) -> Preview:
    """Render the (unsaved) texts on a real chunk of a document or conversation of the workspace,
    as a job's first call would (with the agent's latest approved pairs as examples)."""
    system, user = template_check(system=system, user=user)
    source = document or conversation
    if source is None or source.workspace_id != workspace.pk:
        raise ValidationError({"source": ["Choose a document or conversation of this workspace."]}, code="source")
    text, label, chunks = _chunk_text(document, conversation, index)
    examples: tuple[Example, ...] = ()
    if agent is not None and agent.workspace_id == workspace.pk:
        examples = approved_examples(workspace_id=workspace.pk, agent_ids=[agent.pk], limit=PREVIEW_EXAMPLES)
    guidance = llm.Guidance(
        question_type=question_type, audience=audience, difficulty=difficulty,
        template_system=system, template_user=user, examples=examples,
    )  # fmt: skip
    request = llm.pair_request(
        endpoint.llm_config(), source=text, count=settings.MASSCER_PAIRS_PER_CALL, existing_questions=(),
        instructions="", params=llm.GenParams(), feedback=None, source_kind=source._meta.model_name,
        style="synthesize", guidance=guidance,
    )  # fmt: skip
    return Preview(prompts.system_message(request), prompts.chat_user_message(request), label, chunks)


def _chunk_text(document: Document | None, conversation: Conversation | None, index: int) -> tuple[str, str, int]:
    """The text of chunk `index` as a job would cut it (stored chunks when the source has them),
    its label and how many chunks the source has. Nothing is stored."""
    text: str | None
    if document is not None:
        texts = _document_chunks(document)
        title, total = document.title, len(texts)
        text = texts[index] if 0 <= index < total else None
    else:
        assert conversation is not None
        title = conversation.title or f"conversation {conversation.pk}"
        text, total = _conversation_chunk(conversation, index)
    if text is None:
        problem = f"{title} has {total} chunks: choose 0 to {total - 1}." if total else f"{title} has no text yet."
        raise ValidationError({"index": [problem]}, code="index")
    return text, f"chunk {index} of {title}", total


def _document_chunks(document: Document) -> list[str]:
    stored = list(Chunk.objects.filter(document=document).order_by("index").values_list("text", flat=True))
    if stored:
        return stored
    pages = list(document.pages.order_by("number").values_list("text", flat=True))
    specs = chunk_pages(pages, budget=settings.MASSCER_CHUNK_TOKENS, overlap=settings.MASSCER_CHUNK_OVERLAP)
    return [spec.text for spec in specs]


def _conversation_chunk(conversation: Conversation, index: int) -> tuple[str | None, int]:
    """The chunk's text (None if there is no such chunk) and the count, from the cached split."""
    page = conversation_preview(conversation, max(index, 0) // PER_PAGE + 1)
    text = next((spec.text for spec in page.object_list if spec.index == index), None)
    return text, page.paginator.count
