"""Charlie, an outsider, gets 404 on every object route of alice's workspace (walked from the
URL resolver, so a new route is covered the day it is added)."""
from __future__ import annotations

from typing import Any

import pytest
from django.urls import URLPattern, URLResolver, get_resolver

from conversations.models import ConversationImport
from conversations.services import conversation_create
from masscer.tests.web import fast_passwords  # noqa: F401 - autouse fixture
from training.models import Completion
from training.services.templates import template_create
from workspaces.models import Invitation
from workspaces.services import api_token_create, membership_invite

from .test_generation import new_job, run_job

pytestmark = pytest.mark.django_db
APPS = ("documents", "conversations", "training", "agents", "workspaces")


def object_routes() -> list[tuple[str, str]]:
    routes = []
    for resolver in get_resolver().url_patterns:
        if isinstance(resolver, URLResolver) and resolver.namespace in APPS:
            for pattern in resolver.url_patterns:
                assert isinstance(pattern, URLPattern)
                route = str(resolver.pattern) + str(pattern.pattern)
                if "<int:pk>" in route:
                    routes.append((f"{resolver.namespace}:{pattern.name}", route))
    return routes


def target_model(name: str, route: str) -> str:
    """Which of alice's objects the pk in this route names."""
    if "chunks/document" in route:
        return "document"
    if "chunks/conversation" in route:
        return "conversation"
    if "imports/" in route:
        return "import"
    if "completions/" in route:
        return "completion"
    if "tokens/" in route:
        return "token"
    if "templates/" in route:
        return "template"
    if "invitations/<int:pk>" in route:
        return "invitation"
    return {"documents": "document", "conversations": "conversation", "training": "job", "agents": "agent",
            "workspaces": "workspace"}[name.split(":")[0]]  # fmt: skip


@pytest.fixture
def alices(alice, bob, agent, ready_document, fake_llm, settings, tmp_path) -> dict[str, Any]:
    settings.MEDIA_ROOT = tmp_path
    document = ready_document(alice, pages=1)
    (tmp_path / document.file.name).parent.mkdir(parents=True, exist_ok=True)
    (tmp_path / document.file.name).write_text("the uploaded file")
    job = new_job(alice, document, agent, 2)
    run_job(job)
    conversation = conversation_create(
        owner=alice, messages=[{"role": "user", "content": "Hi?"}, {"role": "assistant", "content": "Hello."}]
    )
    background = ConversationImport.objects.create(
        owner=alice, workspace=conversation.workspace, filename="big.jsonl", total=9
    )
    return {
        "document": document.pk,
        "conversation": conversation.pk,
        "import": background.pk,
        "job": job.pk,
        "completion": Completion.objects.filter(job=job).first().pk,
        "agent": agent.pk,
        "workspace": job.workspace_id,
        "token": api_token_create(user=alice, name="script")[0].pk,
        "invitation": invitation_for(alice, job.workspace, bob).pk,
        "template": template_create(actor=alice, workspace=job.workspace, name="House style", system="",
                                    user="{source}\nNumber of pairs: {count}").pk,
    }


def invitation_for(admin: Any, workspace: Any, user: Any) -> Invitation:
    membership_invite(actor=admin, workspace=workspace, username=user.get_username())
    return Invitation.objects.get(workspace=workspace, user=user)


def test_the_walk_covers_every_kind_of_object() -> None:
    kinds = {target_model(name, route) for name, route in object_routes()}
    assert kinds == {
        "document", "conversation", "import", "job", "completion", "agent", "workspace", "token", "invitation",
        "template",
    }


@pytest.mark.parametrize(("name", "route"), object_routes(), ids=[n for n, _ in object_routes()])
def test_charlie_gets_404_on_alices_objects(client, charlie, alices, name: str, route: str) -> None:
    url = "/" + route.replace("<int:pk>", str(alices[target_model(name, route)])).replace("<int:user_id>", "1").replace(
        "<int:invitation_id>", str(alices["invitation"]))
    client.force_login(charlie)
    for response in (client.get(url), client.post(url)):
        assert response.status_code in (404, 405), (url, response.status_code)


@pytest.mark.parametrize(("name", "route"), object_routes(), ids=[n for n, _ in object_routes()])
def test_the_same_urls_work_for_alice(client, alice, alices, name: str, route: str) -> None:
    """The control: the walk names real objects, so charlie's 404s are refusals, not typos."""
    url = "/" + route.replace("<int:pk>", str(alices[target_model(name, route)])).replace("<int:user_id>", "1").replace(
        "<int:invitation_id>", str(alices["invitation"]))
    client.force_login(alice)
    assert client.get(url).status_code in (200, 302, 405), url
