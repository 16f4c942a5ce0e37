"""Inside a team, only an object's creator or an admin changes it (an agent's material included),
and only reviewers and admins review: walked over every door that changes something.

alice is an admin of the "Support team" workspace and made everything in it; bob is another
admin there (not the creator); rita is a reviewer; dave is a plain member. All four are staff with
every permission of the apps, so in the back office only the workspace rules can refuse them.

Every page route is listed from the URL resolver, every API write from the OpenAPI schema, every
back-office action and model from the admin registry and every command from Django's: a new door
fails `test_every_*_is_in_the_walk` until it says who may use it. Each write is then made by the
people it is refused to (403 or the page's refusal, and the database unchanged, row for row) and by
those it is for (the database changed: the control that the refusals are the rule, not a broken
request). Outsiders are walked in test_outsiders.py (404 everywhere).
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest
from django.apps import apps
from django.contrib import admin
from django.contrib.auth.models import Permission
from django.core.exceptions import PermissionDenied, ValidationError
from django.core.management import get_commands
from django.test import Client, RequestFactory
from django.urls import URLPattern, URLResolver, get_resolver

from agents.services import agent_delete, agent_update
from conversations.models import Conversation, ConversationImport
from conversations.review import conversation_mark_reviewed, message_review
from conversations.services import conversation_create, conversation_delete, conversation_update, message_add
from documents.models import Document, Page
from documents.services import document_delete
from masscer.api import api
from masscer.tests.web import fast_passwords  # noqa: F401 - autouse fixture
from testing.members import add_member
from training import review
from training.models import Completion, TrainingJob, WorkItem
from training.services import completion_review, job_cancel, job_create, job_retry
from training.services.templates import Roles, template_create, template_delete, template_save, template_set_roles
from workspaces.models import Invitation, Membership
from workspaces.permissions import NotAllowed
from workspaces.services import (
    api_token_create,
    api_token_revoke,
    invitation_accept,
    invitation_decline,
    invitation_revoke,
    membership_invite,
    membership_remove,
    membership_set_role,
    workspace_create,
)

from .factories import make_agent, make_chunk, make_completions, make_document, make_job, numbered
from .test_dedupe import ORIGINAL, PARAPHRASE
from .test_outsiders import target_model

pytestmark = pytest.mark.django_db

APPS = ("workspaces", "documents", "conversations", "training", "agents")
EVERYONE = ("alice", "bob", "rita", "dave")
# Who may: an object's creator (alice) or another admin (bob); reviewing adds the reviewer (rita).
CHANGERS = ("alice", "bob")
TEMPLATE = "{rules}\n\n{source}\n\nNumber of pairs: {count}"
REVIEWERS = ("alice", "bob", "rita")


@dataclass(frozen=True)
class Door:
    """One request that changes something, and who it is for; everyone else is refused."""

    method: str
    url: str  # formatted with the team: "{handbook.pk}"
    data: Callable[[dict[str, Any]], dict[str, Any]] | None = None
    allowed: tuple[str, ...] = CHANGERS
    label: str = ""
    refused_status: int = 403
    refusal: str = "Only"  # what the refusal says (case-insensitive)
    prepare: Callable[[dict[str, Any]], None] | None = None

    @property
    def refused(self) -> tuple[str, ...]:
        return tuple(who for who in EVERYONE if who not in self.allowed)


def flagged(team: dict[str, Any]) -> None:
    """The paraphrase flagged as a near-duplicate of the original (keep and merge need a group)."""
    Completion.objects.filter(pk=team["paraphrase"].pk).update(duplicate_of=team["original"])


def back_office(user: Any) -> Any:
    user.is_staff = True
    user.save()
    user.user_permissions.add(*Permission.objects.filter(content_type__app_label__in=APPS))
    return user


@pytest.fixture
def team(alice, bob, charlie, django_user_model) -> dict[str, Any]:
    rita = django_user_model.objects.create_user("rita", password="rita-Secret-123")
    dave = django_user_model.objects.create_user("dave", password="dave-Secret-123")
    workspace = workspace_create(name="Support team", admin=alice)
    add_member(actor=alice, workspace=workspace, user=bob, role=Membership.Role.ADMIN)
    add_member(actor=alice, workspace=workspace, user=rita, role=Membership.Role.REVIEWER)
    add_member(actor=alice, workspace=workspace, user=dave, role=Membership.Role.MEMBER)
    for user in (alice, bob, rita, dave):
        back_office(user)
    handbook = make_document(alice, title="Handbook", workspace=workspace)  # nothing quotes it: deletable
    manual = make_document(alice, title="Manual", workspace=workspace)
    chat = [{"role": "user", "content": "Can I get a refund?"}, {"role": "assistant", "content": "Within 14 days."}]
    support = make_agent(alice, slug="support", workspace=workspace)
    done = make_job(alice, workspace=workspace, count=3)
    running = make_job(alice, workspace=workspace, status=TrainingJob.Status.GENERATING)
    chunk = make_chunk(manual)
    rows = make_completions(done, chunk, numbered(3), agents=[support])
    return {
        "alice": alice, "bob": bob, "rita": rita, "dave": dave, "charlie": charlie, "workspace": workspace,
        "handbook": handbook, "manual": manual, "page": Page.objects.create(document=handbook, number=1, text="Hi."),
        "conversation": conversation_create(owner=alice, workspace=workspace, title="Refunds chat", messages=chat),
        "support": support, "sales": make_agent(alice, slug="sales", workspace=workspace),
        "done": done, "running": running, "failed": make_job(alice, workspace=workspace, status="failed"),
        "item": WorkItem.objects.create(job=running, chunk=chunk, quota=1), "chunk": chunk, "rows": rows,
        "original": make_completions(done, chunk, [ORIGINAL], agents=[support], status="approved")[0],
        "paraphrase": make_completions(done, chunk, [PARAPHRASE], agents=[support])[0],
        "token": api_token_create(user=alice, name="nightly export")[0],
        "background": ConversationImport.objects.create(owner=alice, workspace=workspace, filename="big.jsonl"),
        "invitation": invited(alice, workspace, charlie),
        "template": template_create(actor=alice, workspace=workspace, name="House style", system="", user=TEMPLATE),
    }  # fmt: skip


def invited(admin: Any, workspace: Any, user: Any) -> Invitation:
    """charlie, an outsider, invited as a member: only he may answer it."""
    membership_invite(actor=admin, workspace=workspace, username=user.get_username())
    return Invitation.objects.get(workspace=workspace, user=user)


def snapshot() -> dict[str, list[dict[str, Any]]]:
    """Every row of the apps' tables (many-to-many ones too), to tell "nothing changed" exactly."""
    return {
        model._meta.label: list(model.objects.order_by("pk").values())
        for model in apps.get_models(include_auto_created=True)
        if model._meta.app_label in APPS
    }


def resolve(template: str, team: dict[str, Any]) -> str:
    return template.format_map(team)


def send(team: dict[str, Any], who: str, door: Door, *, json: bool = False, follow: bool = False) -> Any:
    client = Client()
    client.force_login(team[who])
    data = door.data(team) if door.data else {}
    method = getattr(client, door.method)
    if json:
        return method(resolve(door.url, team), data, content_type="application/json")
    return method(resolve(door.url, team), data, follow=follow)


def refused_and_unchanged(team: dict[str, Any], who: str, door: Door, **how: Any) -> None:
    if door.prepare:
        door.prepare(team)
    before = snapshot()
    response = send(team, who, door, **how)
    assert response.status_code == door.refused_status, (who, response.status_code, response.content[:300])
    assert door.refusal.lower() in response.content.decode().lower()
    assert snapshot() == before, f"{who}'s refused request changed the database"


def allowed_and_changed(team: dict[str, Any], who: str, door: Door, **how: Any) -> None:
    if door.prepare:
        door.prepare(team)
    before = snapshot()
    response = send(team, who, door, **how)
    assert response.status_code < 400, (who, response.status_code, response.content[:300])
    assert snapshot() != before, f"{who}'s request changed nothing: the walk does not name a real write"


def refusals(doors: dict[Any, list[Door]]) -> list[Any]:
    return [pytest.param(door, who, id=f"{key} {door.label} as {who}".replace("  ", " "))
            for key, listed in doors.items() for door in listed for who in door.refused]


def controls(doors: dict[Any, list[Door]]) -> list[Any]:
    return [pytest.param(door, who, id=f"{key} {door.label} as {who}".replace("  ", " "))
            for key, listed in doors.items() for door in listed for who in door.allowed]


# --- the pages ---------------------------------------------------------------------------------

READS = "reads only: a POST is answered 405"
PAGES_THAT_CHANGE_NOTHING_OF_ALICES = {
    "documents:list": "uploads a document, the uploader's own",
    "documents:detail": READS,
    "documents:download": READS,
    "conversations:list": READS,
    "conversations:new": "writes a conversation, the writer's own",
    "conversations:import": "imports conversations, the importer's own",
    "conversations:detail": READS,
    "conversations:import_progress": READS,
    "training:jobs": READS,
    "training:estimate": READS,
    "training:job": READS,
    "training:progress": READS,
    "training:review": READS,
    "training:completion": READS,
    "training:document_chunks": READS,
    "training:conversation_chunks": READS,
    "agents:list": READS,
    "agents:new": "creates an agent, the creator's own",
    "agents:detail": READS,
    "agents:export": READS,
    "agents:explain": READS,
    "training:conversations_export": READS,
    "agents:playground": READS,
    "agents:playground_stream": "a chat turn: reads the agent and its approved material, writes nothing",
    "workspaces:list": "creates a workspace, with its creator as its admin",
    "workspaces:tokens": "creates an API token, the user's own",
    "workspaces:detail": READS,
    "training:templates": READS,
    "training:template": READS,
    "training:template_new": "creates a prompt template, the creator's own (or previews one: writes nothing)",
}

MATERIAL = {"selection": "all", "scope": "assigned"}
TRAIN = {"count": 2, "model": "fake-model", "temperature": "", "top_p": "", "max_tokens": "", "frequency_penalty": "",
         "stop": "", "instructions": ""}
PAGE_DOORS: dict[str, list[Door]] = {
    "documents:delete": [Door("post", "/documents/{handbook.pk}/delete/")],
    "conversations:edit": [
        Door("post", "/conversations/{conversation.pk}/edit/", label="save_details",
             data=lambda t: {"save_details": "1", "title": "Renamed by someone", "tags": "x"}),
        Door("post", "/conversations/{conversation.pk}/edit/", label="add_message",
             data=lambda t: {"add_message": "1", "new-role": "user", "new-content": "Appended."}),
    ],
    "conversations:delete": [Door("post", "/conversations/{conversation.pk}/delete/")],
    # A job attaches its completions to its agents: that is changing them. A member picks among
    # the agents he may change (alice's are not offered) or names a new one of his own.
    "training:new": [
        Door("post", "/jobs/new/", label="agents", refused_status=400, refusal="Select a valid choice",
             data=lambda t: {**TRAIN, "document": t["handbook"].pk, "agents": [t["support"].pk]}),
        Door("post", "/jobs/new/", label="new_agent named like alice's", refused_status=400,
             refusal="Only the creator of this agent",
             data=lambda t: {**TRAIN, "document": t["handbook"].pk, "new_agent": "Support"}),
    ],
    "training:cancel": [Door("post", "/jobs/{running.pk}/cancel/")],
    "training:template_edit": [
        Door("post", "/jobs/templates/{template.pk}/edit/",
             data=lambda t: {"system": "", "user": TEMPLATE + "\nShort answers.", "action": "save"}),
    ],
    "training:template_delete": [Door("post", "/jobs/templates/{template.pk}/delete/")],
    "training:retry": [Door("post", "/jobs/{failed.pk}/retry/")],
    "training:completion_review": [
        Door("post", "/jobs/completions/{rows[0].pk}/review/", allowed=REVIEWERS, label="approve",
             data=lambda t: {"action": "approve"}),
        Door("post", "/jobs/completions/{rows[0].pk}/review/", allowed=REVIEWERS, label="edit",
             data=lambda t: {"action": "save", "question": "Edited?", "answer": "Edited."}),
    ],
    "training:review_bulk": [
        Door("post", "/jobs/review/bulk/", allowed=REVIEWERS, data=lambda t: {"action": "reject", "scope": "all"}),
    ],
    "agents:edit": [
        Door("post", "/agents/{support.pk}/edit/", data=lambda t: {
            "name": "Support", "system_prompt": "Promise everyone a refund.", "model": "", "temperature": "",
            "top_p": "", "max_tokens": "", "frequency_penalty": "",
        }),
    ],
    "agents:material": [
        Door("post", "/agents/{support.pk}/material/", label="copy",
             data=lambda t: {**MATERIAL, "action": "copy", "target": t["sales"].pk}),
        Door("post", "/agents/{support.pk}/material/", label="unassign",
             data=lambda t: {**MATERIAL, "action": "unassign"}),
        Door("post", "/agents/{support.pk}/material/", label="move",
             data=lambda t: {**MATERIAL, "action": "move", "target": t["sales"].pk}),
        Door("post", "/agents/{support.pk}/material/", label="rule",
             data=lambda t: {**MATERIAL, "action": "rule", "rule": "tags", "tags": "vip"}),
    ],
    # A context rule changes the agent: its creator or an admin, from the review card too.
    "training:assignment_rule": [
        Door("post", "/jobs/completions/{rows[0].pk}/rule/",
             data=lambda t: {"agent": t["support"].pk, "rule": "always", "tags": "billing"}),
    ],
    "conversations:review": [
        Door("post", "/conversations/{conversation.pk}/review/", allowed=REVIEWERS, data=lambda t: {"reviewed": "1"}),
    ],
    "conversations:turn": [
        Door("post", "/conversations/{conversation.pk}/turn/", allowed=REVIEWERS, label="weight",
             data=lambda t: {"position": 1, "weight": 0}),
        Door("post", "/conversations/{conversation.pk}/turn/", allowed=REVIEWERS, label="edit",
             data=lambda t: {"position": 1, "content": "Within 30 days."}),
    ],
    "workspaces:member_add": [
        Door("post", "/workspaces/{workspace.pk}/members/", data=lambda t: {"username": "charlie", "role": "admin"}),
    ],
    "workspaces:member_remove": [Door("post", "/workspaces/{workspace.pk}/members/{rita.pk}/remove/",
                                      allowed=("alice", "bob"))],
    "workspaces:invitation_withdraw": [
        Door("post", "/workspaces/{workspace.pk}/invitations/{invitation.pk}/withdraw/"),
    ],
    # An invitation is answered by its invitee only: to everyone else it is not found.
    "workspaces:invitation_accept": [
        Door("post", "/workspaces/invitations/{invitation.pk}/accept/", allowed=("charlie",), refused_status=404,
             refusal=""),
    ],
    "workspaces:invitation_decline": [
        Door("post", "/workspaces/invitations/{invitation.pk}/decline/", allowed=("charlie",), refused_status=404,
             refusal=""),
    ],
    # Tokens are personal: another user's token is not found, as for an outsider.
    "workspaces:token_revoke": [
        Door("post", "/workspaces/tokens/{token.pk}/revoke/", allowed=("alice",), refused_status=404, refusal=""),
    ],
}


def page_routes() -> dict[str, str]:
    routes = {}
    for resolver in get_resolver().url_patterns:
        if isinstance(resolver, URLResolver) and resolver.namespace in APPS:
            for pattern in resolver.url_patterns:
                assert isinstance(pattern, URLPattern)
                routes[f"{resolver.namespace}:{pattern.name}"] = str(resolver.pattern) + str(pattern.pattern)
    return routes


def test_every_page_route_is_in_the_walk() -> None:
    assert set(page_routes()) == set(PAGE_DOORS) | set(PAGES_THAT_CHANGE_NOTHING_OF_ALICES)
    assert not set(PAGE_DOORS) & set(PAGES_THAT_CHANGE_NOTHING_OF_ALICES)


@pytest.mark.parametrize("door, who", refusals(PAGE_DOORS))
def test_pages_refuse(team, door: Door, who: str) -> None:
    refused_and_unchanged(team, who, door)


@pytest.mark.parametrize("door, who", controls(PAGE_DOORS))
def test_pages_let_through_those_the_rule_allows(team, door: Door, who: str) -> None:
    allowed_and_changed(team, who, door)


# The row a read-only page is tried on, by the kind of object its pk names.
ROW_OF = {"document": "handbook", "conversation": "conversation", "job": "done", "completion": "rows[0]",
          "agent": "support", "workspace": "workspace", "token": "token", "import": "background",
          "template": "template"}


@pytest.mark.parametrize("name", [name for name, why in PAGES_THAT_CHANGE_NOTHING_OF_ALICES.items() if why == READS])
def test_read_only_pages_take_no_posts(team, name: str) -> None:
    route = "/" + page_routes()[name]
    if "<int:pk>" in route:
        route = route.replace("<int:pk>", "{" + ROW_OF[target_model(name, route)] + ".pk}")
    before = snapshot()
    assert dave_on(team).post(resolve(route, team)).status_code == 405, route
    assert snapshot() == before


# --- the reports of issue #12, one by one ------------------------------------------------------


def dave_on(team: dict[str, Any]) -> Client:
    client = Client()
    client.force_login(team["dave"])
    return client


def test_dave_cannot_rewrite_alices_agents_system_prompt(team) -> None:
    response = dave_on(team).post(f"/agents/{team['support'].pk}/edit/", {
        "name": "Support", "system_prompt": "Ignore the handbook.", "model": "", "temperature": "", "top_p": "",
        "max_tokens": "", "frequency_penalty": "",
    })
    assert response.status_code == 403
    assert "Only the creator of this agent or an admin of its workspace may change it." in response.content.decode()
    team["support"].refresh_from_db()
    assert team["support"].system_prompt == "You help customers."


def test_dave_does_not_even_get_the_edit_forms_of_alices_agent_and_conversation(team) -> None:
    assert dave_on(team).get(f"/agents/{team['support'].pk}/edit/").status_code == 403
    assert dave_on(team).get(f"/conversations/{team['conversation'].pk}/edit/").status_code == 403


def test_dave_cannot_delete_alices_document(team) -> None:
    response = dave_on(team).post(f"/documents/{team['handbook'].pk}/delete/")
    assert response.status_code == 403
    assert "Only the creator of this document or an admin of its workspace may delete it." in response.content.decode()
    assert Document.objects.filter(pk=team["handbook"].pk).exists()


def test_dave_cannot_rename_alices_conversation_nor_add_to_it(team) -> None:
    url = f"/conversations/{team['conversation'].pk}/edit/"
    renamed = dave_on(team).post(url, {"save_details": "1", "title": "Dave was here", "tags": ""})
    appended = dave_on(team).post(url, {"add_message": "1", "new-role": "user", "new-content": "Appended."})
    assert renamed.status_code == appended.status_code == 403
    team["conversation"].refresh_from_db()
    assert team["conversation"].title == "Refunds chat" and team["conversation"].messages.count() == 2


def test_dave_cannot_delete_alices_conversation(team) -> None:
    response = dave_on(team).post(f"/conversations/{team['conversation'].pk}/delete/")
    assert response.status_code == 403
    assert Conversation.objects.filter(pk=team["conversation"].pk).exists()


def test_dave_cannot_cancel_alices_job_through_the_api(team) -> None:
    response = dave_on(team).post(f"/api/jobs/{team['running'].pk}/cancel")
    assert response.status_code == 403
    assert response.json() == {
        "detail": "Only the creator of this training job or an admin of its workspace may cancel it."
    }
    team["running"].refresh_from_db()
    assert team["running"].status == TrainingJob.Status.GENERATING


def test_rita_reviews_alices_completions_but_cannot_delete_her_document(team) -> None:
    client = Client()
    client.force_login(team["rita"])
    client.post(f"/jobs/completions/{team['rows'][0].pk}/review/", {"action": "approve"})
    assert Completion.objects.get(pk=team["rows"][0].pk).status == Completion.Status.APPROVED
    assert client.post(f"/documents/{team['handbook'].pk}/delete/").status_code == 403
    assert Document.objects.filter(pk=team["handbook"].pk).exists()


def test_dave_changes_what_he_made_himself(team) -> None:
    mine = make_document(team["dave"], title="Dave's notes", workspace=team["workspace"])
    response = dave_on(team).post(f"/documents/{mine.pk}/delete/")
    assert response.status_code == 302 and not Document.objects.filter(pk=mine.pk).exists()


def test_dave_trains_an_agent_of_his_own_with_alices_handbook(team) -> None:
    dialog = dave_on(team).get(f"/jobs/new/?document={team['handbook'].pk}").content.decode()
    assert 'name="agents"' not in dialog  # alice's agents are not offered to him
    assert "No agent here you may attach material to" in dialog
    response = dave_on(team).post("/jobs/new/", {**TRAIN, "document": team["handbook"].pk, "new_agent": "Daves bot"})
    assert response.status_code == 302
    job = TrainingJob.objects.get(owner=team["dave"])
    assert [(agent.name, agent.owner) for agent in job.agents.all()] == [("Daves bot", team["dave"])]


# --- the JSON API -------------------------------------------------------------------------------

API_WRITES_THAT_CREATE = {
    ("post", "/api/documents"): "uploads a document, the uploader's own",
    ("post", "/api/conversations/import"): "imports conversations, the importer's own",
    ("post", "/api/agents"): "creates an agent, the creator's own",
    ("post", "/api/tokens"): "creates an API token, the user's own",
    ("post", "/api/workspaces/{workspace_id}/templates"): "creates a prompt template, the creator's own",
    ("post", "/api/workspaces/{workspace_id}/templates/preview"): "writes nothing: renders a prompt on a chunk",
}
API_DOORS: dict[tuple[str, str], list[Door]] = {
    ("delete", "/api/documents/{document_id}"): [Door("delete", "/api/documents/{handbook.pk}")],
    ("patch", "/api/agents/{agent_id}"): [
        Door("patch", "/api/agents/{support.pk}", data=lambda t: {"system_prompt": "Promise refunds."}),
    ],
    ("delete", "/api/agents/{agent_id}"): [Door("delete", "/api/agents/{sales.pk}")],
    ("post", "/api/jobs"): [
        Door("post", "/api/jobs", refusal="Only the creator of this agent",
             data=lambda t: {"count": 2, "documents": [t["handbook"].pk], "agents": [t["support"].pk]}),
    ],
    ("post", "/api/jobs/{job_id}/cancel"): [Door("post", "/api/jobs/{running.pk}/cancel")],
    ("post", "/api/templates/{template_id}/versions"): [
        Door("post", "/api/templates/{template.pk}/versions", data=lambda t: {"user": TEMPLATE + "\nShort."}),
    ],
    # The workspace default changes everyone's jobs: admins (alice and bob) only.
    ("patch", "/api/templates/{template_id}"): [
        Door("patch", "/api/templates/{template.pk}", data=lambda t: {"is_default": True}),
    ],
    ("delete", "/api/templates/{template_id}"): [Door("delete", "/api/templates/{template.pk}")],
    ("post", "/api/jobs/{job_id}/retry"): [Door("post", "/api/jobs/{failed.pk}/retry")],
    ("patch", "/api/completions/{completion_id}"): [
        Door("patch", "/api/completions/{rows[0].pk}", allowed=REVIEWERS, data=lambda t: {"answer": "Better."}),
    ],
    ("post", "/api/completions/{completion_id}/approve"): [
        Door("post", "/api/completions/{rows[0].pk}/approve", allowed=REVIEWERS),
    ],
    ("post", "/api/completions/{completion_id}/reject"): [
        Door("post", "/api/completions/{rows[0].pk}/reject", allowed=REVIEWERS),
    ],
    ("post", "/api/completions/assign"): [
        Door("post", "/api/completions/assign",
             data=lambda t: {"agent": t["sales"].pk, "completion_ids": [t["rows"][0].pk]}),
    ],
    ("post", "/api/completions/unassign"): [
        Door("post", "/api/completions/unassign",
             data=lambda t: {"agent": t["support"].pk, "completion_ids": [t["rows"][0].pk]}),
    ],
    # A bulk review: the rows the user may not review are skipped, and the answer says so.
    ("post", "/api/completions/regenerate"): [
        Door("post", "/api/completions/regenerate", allowed=REVIEWERS, refused_status=200,
             refusal="you are not a reviewer", data=lambda t: {"completion_ids": [t["rows"][0].pk]}),
    ],
    ("post", "/api/completions/{completion_id}/keep"): [
        Door("post", "/api/completions/{original.pk}/keep", allowed=REVIEWERS, prepare=flagged,
             data=lambda t: {"merge": True}),
    ],
    ("post", "/api/agents/{agent_id}/rules"): [
        Door("post", "/api/agents/{support.pk}/rules",
             data=lambda t: {"completion_ids": [t["rows"][0].pk], "rule": "tags", "tags": ["vip"]}),
    ],
    ("post", "/api/agents/{agent_id}/duplicates"): [
        Door("post", "/api/agents/{support.pk}/duplicates", allowed=REVIEWERS),
    ],
    ("post", "/api/workspaces/{workspace_id}/members"): [
        Door("post", "/api/workspaces/{workspace.pk}/members", data=lambda t: {"username": "charlie", "role": "admin"}),
    ],
    ("post", "/api/invitations/{invitation_id}/accept"): [
        Door("post", "/api/invitations/{invitation.pk}/accept", allowed=("charlie",), refused_status=404,
             refusal="not found"),
    ],
    ("post", "/api/invitations/{invitation_id}/decline"): [
        Door("post", "/api/invitations/{invitation.pk}/decline", allowed=("charlie",), refused_status=404,
             refusal="not found"),
    ],
    ("delete", "/api/tokens/{token_id}"): [
        Door("delete", "/api/tokens/{token.pk}", allowed=("alice",), refused_status=404, refusal="not found"),
    ],
}


def test_every_api_write_is_in_the_walk() -> None:
    schema = api.get_openapi_schema()
    writes = {(method, path) for path, ops in schema["paths"].items() for method in ops if method != "get"}
    assert writes == set(API_DOORS) | set(API_WRITES_THAT_CREATE)


@pytest.mark.parametrize("door, who", refusals(API_DOORS))
def test_the_api_refuses(team, door: Door, who: str) -> None:
    refused_and_unchanged(team, who, door, json=True)


@pytest.mark.parametrize("door, who", controls(API_DOORS))
def test_the_api_lets_through_those_the_rule_allows(team, door: Door, who: str) -> None:
    allowed_and_changed(team, who, door, json=True)


# --- the back office ----------------------------------------------------------------------------


def action(model: str, name: str, selected: str, *, allowed: tuple[str, ...] = CHANGERS, refusal: str = "Only",
           refused_status: int = 200, extra: Callable[[dict[str, Any]], dict[str, Any]] | None = None,
           prepare: Callable[[dict[str, Any]], None] | None = None) -> Door:
    """An admin action on the changelist; a refusal is a message on the list (or a 403)."""
    app_label, model_name = model.lower().split(".")

    def data(team: dict[str, Any]) -> dict[str, Any]:
        chosen = resolve("{" + selected + ".pk}", team)
        return {"action": name, "index": 0, "_selected_action": [chosen], **(extra(team) if extra else {})}

    return Door("post", f"/admin/{app_label}/{model_name}/", data=data, allowed=allowed, refusal=refusal,
                refused_status=refused_status, prepare=prepare)


NOT_A_REVIEWER = "you are not a reviewer"
DELETE_CONFIRMED = {"post": "yes"}
ADMIN_ACTIONS: dict[tuple[str, str], list[Door]] = {
    ("training.Completion", "approve"): [action("training.Completion", "approve", "rows[0]", allowed=REVIEWERS,
                                                refusal=NOT_A_REVIEWER)],
    ("training.Completion", "reject"): [action("training.Completion", "reject", "rows[0]", allowed=REVIEWERS,
                                               refusal=NOT_A_REVIEWER)],
    ("training.Completion", "assign"): [action("training.Completion", "assign", "rows[0]",
                                               extra=lambda t: {"agent": t["sales"].pk})],
    ("training.Completion", "unassign"): [action("training.Completion", "unassign", "rows[0]",
                                                 extra=lambda t: {"agent": t["support"].pk})],
    ("training.Completion", "regenerate"): [action("training.Completion", "regenerate", "rows[0]",
                                                   allowed=REVIEWERS, refusal=NOT_A_REVIEWER)],
    ("training.Completion", "flag_duplicates"): [action("training.Completion", "flag_duplicates", "original",
                                                        allowed=REVIEWERS, extra=lambda t: {"agent": t["support"].pk})],
    ("training.Completion", "keep_one"): [action("training.Completion", "keep_one", "original", allowed=REVIEWERS,
                                                 refusal=NOT_A_REVIEWER, prepare=flagged)],
    ("training.Completion", "merge"): [action("training.Completion", "merge", "original", allowed=REVIEWERS,
                                              refusal=NOT_A_REVIEWER, prepare=flagged)],
    ("training.TrainingJob", "cancel"): [action("training.TrainingJob", "cancel", "running")],
    ("training.TrainingJob", "retry"): [action("training.TrainingJob", "retry", "failed")],
    ("documents.Document", "delete_selected"): [
        action("documents.Document", "delete_selected", "handbook", refused_status=403, refusal="permission",
               extra=lambda t: DELETE_CONFIRMED),
    ],
    ("conversations.Conversation", "delete_selected"): [
        action("conversations.Conversation", "delete_selected", "conversation", refused_status=403,
               refusal="permission", extra=lambda t: DELETE_CONFIRMED),
    ],
    ("agents.Agent", "delete_selected"): [
        action("agents.Agent", "delete_selected", "sales", refused_status=403, refusal="permission",
               extra=lambda t: DELETE_CONFIRMED),
    ],
}

# Each model of the back office, with the row its forms are tried on.
ADMIN_ROWS = {
    "workspaces.Workspace": "workspace", "documents.Document": "handbook", "documents.Page": "page",
    "conversations.Conversation": "conversation", "agents.Agent": "sales", "training.TrainingJob": "done",
    "training.WorkItem": "item", "training.Chunk": "chunk", "training.Completion": "rows[0]",
    "training.PromptTemplate": "template",
}  # fmt: skip
# Deleting is the app's delete service; editing is reviewing (completions only); nothing is added here.
DELETED_THROUGH_A_SERVICE = {"documents.Document", "conversations.Conversation", "agents.Agent"}
REVIEW_EDIT = {"question": "What does Gold cost?", "answer": "149 euros a year.", "status": "approved"}


def admin_forms() -> dict[tuple[str, str], list[Door]]:
    doors: dict[tuple[str, str], list[Door]] = {}
    for label, row in ADMIN_ROWS.items():
        base = "/admin/" + label.lower().replace(".", "/") + "/"
        refusal = "permission"
        doors[(label, "add")] = [Door("get", base + "add/", allowed=(), refusal=refusal)]
        doors[(label, "change")] = [
            Door("post", base + "{" + row + ".pk}/change/", refusal=refusal,
                 allowed=REVIEWERS if label == "training.Completion" else (),
                 data=(lambda t: REVIEW_EDIT) if label == "training.Completion" else None),
        ]
        doors[(label, "delete")] = [
            Door("post", base + "{" + row + ".pk}/delete/", data=lambda t: DELETE_CONFIRMED, refusal=refusal,
                 allowed=CHANGERS if label in DELETED_THROUGH_A_SERVICE else ()),
        ]
    return doors


ADMIN_FORMS = admin_forms()


def test_every_admin_model_and_action_is_in_the_walk(team) -> None:
    registered = {model._meta.label: model_admin for model, model_admin in admin.site._registry.items()
                  if model._meta.app_label in APPS}
    assert set(registered) == set(ADMIN_ROWS)
    request = RequestFactory().get("/admin/")
    request.user = team["dave"]
    offered = {(label, name) for label, model_admin in registered.items() for name in model_admin.get_actions(request)}
    assert offered == set(ADMIN_ACTIONS)


@pytest.mark.parametrize("door, who", refusals(ADMIN_ACTIONS))
def test_admin_actions_refuse(team, door: Door, who: str) -> None:
    refused_and_unchanged(team, who, door, follow=True)


@pytest.mark.parametrize("door, who", controls(ADMIN_ACTIONS))
def test_admin_actions_let_through_those_the_rule_allows(team, door: Door, who: str) -> None:
    allowed_and_changed(team, who, door, follow=True)


@pytest.mark.parametrize("door, who", refusals(ADMIN_FORMS))
def test_admin_forms_refuse(team, door: Door, who: str) -> None:
    refused_and_unchanged(team, who, door)


@pytest.mark.parametrize("door, who", controls(ADMIN_FORMS))
def test_admin_forms_let_through_those_the_rule_allows(team, door: Door, who: str) -> None:
    allowed_and_changed(team, who, door)


@pytest.mark.parametrize("label", list(ADMIN_ROWS))
def test_the_back_office_still_shows_dave_the_teams_rows(team, label: str) -> None:
    base = "/admin/" + label.lower().replace(".", "/") + "/"
    client = dave_on(team)
    assert client.get(base).status_code == 200
    page = client.get(base + resolve("{" + ADMIN_ROWS[label] + ".pk}/change/", team))
    assert page.status_code == 200 and not page.context["has_change_permission"]


@pytest.mark.parametrize("label", list(ADMIN_ROWS))
def test_staff_from_another_workspace_see_none_of_the_teams_rows(team, label: str) -> None:
    # charlie is staff with every view permission of the apps, but no member of the team.
    charlie = back_office(team["charlie"])
    client = Client()
    client.force_login(charlie)
    base = "/admin/" + label.lower().replace(".", "/") + "/"
    listing = client.get(base)
    assert listing.status_code == 200
    row = resolve("{" + ADMIN_ROWS[label] + ".pk}", team)
    assert int(row) not in {obj.pk for obj in listing.context["cl"].result_list}
    page = client.get(base + row + "/change/", follow=True)
    assert page.redirect_chain or page.status_code == 404  # "does not exist": sent to the admin index
    assert "doesn’t exist" in page.content.decode() or page.status_code == 404


# --- commands -----------------------------------------------------------------------------------

COMMANDS = {
    "train": "creates documents, conversations, agents and a job, all in the user's own workspace",
    "import_conversations": "creates conversations in the user's own workspace",
    "export": "reads an agent's dataset",
    "demo_setup": "creates the demo login and its agent",
}


def test_every_command_is_in_the_walk() -> None:
    assert {name for name, app in get_commands().items() if app in APPS} == set(COMMANDS)


# --- the services themselves: every door above goes through one of these -----------------------


@dataclass(frozen=True)
class Call:
    """A service called directly, and who it is for."""

    allowed: tuple[str, ...]
    run: Callable[[dict[str, Any], Any], Any]
    prepare: Callable[[dict[str, Any]], None] | None = None


SERVICES: dict[str, Call] = {
    "agent_update": Call(CHANGERS, lambda t, actor: agent_update(
        actor=actor, agent=t["support"], system_prompt="Promise refunds.")),
    "agent_delete": Call(CHANGERS, lambda t, actor: agent_delete(actor=actor, agent=t["sales"])),
    "document_delete": Call(CHANGERS, lambda t, actor: document_delete(actor=actor, document=t["handbook"])),
    "conversation_update": Call(CHANGERS, lambda t, actor: conversation_update(
        actor=actor, conversation=t["conversation"], title="Renamed")),
    "message_add": Call(CHANGERS, lambda t, actor: message_add(
        actor=actor, conversation=t["conversation"], role="user", content="More?")),
    "conversation_delete": Call(CHANGERS, lambda t, actor: conversation_delete(
        actor=actor, conversation=t["conversation"])),
    "job_create": Call(CHANGERS, lambda t, actor: job_create(
        owner=actor, count=2, documents=[t["handbook"]], agents=[t["support"]])),
    "job_cancel": Call(CHANGERS, lambda t, actor: job_cancel(actor=actor, job=t["running"])),
    "job_retry": Call(CHANGERS, lambda t, actor: job_retry(actor=actor, job=t["failed"])),
    "completions_assign": Call(CHANGERS, lambda t, actor: review.completions_assign(
        actor=actor, completion_ids=[t["rows"][0].pk], agent=t["sales"])),
    "completions_unassign": Call(CHANGERS, lambda t, actor: review.completions_unassign(
        actor=actor, completion_ids=[t["rows"][0].pk], agent=t["support"])),
    "assignments_set_rule": Call(CHANGERS, lambda t, actor: review.assignments_set_rule(
        actor=actor, agent=t["support"], completion_ids=[t["rows"][0].pk], rule="always")),
    "conversation_mark_reviewed": Call(REVIEWERS, lambda t, actor: conversation_mark_reviewed(
        reviewer=actor, conversation=t["conversation"])),
    "message_review": Call(REVIEWERS, lambda t, actor: message_review(
        reviewer=actor, message=t["conversation"].messages.get(position=1), weight=0, content="Within 30 days.")),
    "completions_move": Call(CHANGERS, lambda t, actor: review.completions_move(
        actor=actor, completion_ids=[t["rows"][0].pk], source=t["support"], target=t["sales"])),
    "completion_review": Call(REVIEWERS, lambda t, actor: completion_review(
        completion=t["rows"][0], status="approved", reviewer=actor)),
    "completions_regenerate": Call(REVIEWERS, lambda t, actor: review.completions_regenerate(
        completions=Completion.objects.filter(pk=t["rows"][0].pk), reviewer=actor)),
    "duplicates_flag": Call(REVIEWERS, lambda t, actor: review.duplicates_flag(actor=actor, agent=t["support"])),
    "duplicates_keep_one": Call(REVIEWERS, lambda t, actor: review.duplicates_keep_one(
        keep=t["original"], reviewer=actor), prepare=flagged),
    "membership_invite": Call(CHANGERS, lambda t, actor: membership_invite(
        actor=actor, workspace=t["workspace"], username="charlie", role="admin")),
    "membership_set_role": Call(CHANGERS, lambda t, actor: membership_set_role(
        actor=actor, workspace=t["workspace"], user=t["dave"], role="reviewer")),
    "invitation_revoke": Call(CHANGERS, lambda t, actor: invitation_revoke(actor=actor, invitation=t["invitation"])),
    "invitation_accept": Call(("charlie",), lambda t, actor: invitation_accept(user=actor, invitation=t["invitation"])),
    "invitation_decline": Call(("charlie",), lambda t, actor: invitation_decline(
        user=actor, invitation=t["invitation"])),
    "membership_remove": Call(CHANGERS, lambda t, actor: membership_remove(
        actor=actor, workspace=t["workspace"], user=t["rita"])),
    "api_token_revoke": Call(("alice",), lambda t, actor: api_token_revoke(actor=actor, token=t["token"])),
    "template_create": Call(EVERYONE, lambda t, actor: template_create(
        actor=actor, workspace=t["workspace"], name="Mine", system="", user=TEMPLATE)),
    "template_save": Call(CHANGERS, lambda t, actor: template_save(
        actor=actor, template=t["template"], system="", user=TEMPLATE + "\nShort.")),
    "template_set_roles": Call(CHANGERS, lambda t, actor: template_set_roles(
        actor=actor, template=t["template"], roles=Roles(is_default=True))),
    "template_delete": Call(CHANGERS, lambda t, actor: template_delete(actor=actor, template=t["template"])),
}
# Bulk reviews skip the rows the user may not review and say so, rather than refuse the request.
SKIPS_INSTEAD = {"completions_regenerate"}
# Making something in a workspace asks for membership first (a ValidationError, 403 in the API).
NOT_A_MEMBER_FIRST = {"job_create", "template_create"}


@pytest.mark.parametrize(("service", "who"), [(name, who) for name, call in SERVICES.items()
                                              for who in (*EVERYONE, "charlie") if who not in call.allowed])
def test_the_service_itself_refuses(team, service: str, who: str) -> None:
    """The rule holds whichever door calls (a command, a task, a door yet to come): it is in the service."""
    call = SERVICES[service]
    if call.prepare:
        call.prepare(team)
    before = snapshot()
    if service in SKIPS_INSTEAD:
        assert call.run(team, team[who]).done == 0
    elif service in NOT_A_MEMBER_FIRST and who == "charlie":
        with pytest.raises(ValidationError, match="not a member"):
            call.run(team, team[who])
    else:
        with pytest.raises(PermissionDenied) as refused:
            call.run(team, team[who])
        # completion_review keeps its own check (training.services), a PermissionDenied too.
        assert isinstance(refused.value, NotAllowed) or service == "completion_review"
    assert snapshot() == before


@pytest.mark.parametrize(("service", "who"), [(name, who) for name, call in SERVICES.items() for who in call.allowed])
def test_the_service_lets_through_those_the_rule_allows(team, service: str, who: str) -> None:
    call = SERVICES[service]
    if call.prepare:
        call.prepare(team)
    before = snapshot()
    call.run(team, team[who])
    assert snapshot() != before
