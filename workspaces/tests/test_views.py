"""Workspace pages, and the rule that every page of the app needs a login."""
from __future__ import annotations

from typing import Any

import pytest
from django.urls import URLPattern, URLResolver, get_resolver

from masscer.tests.web import fast_passwords  # noqa: F401 - autouse fixture
from workspaces.models import Membership
from workspaces.services import membership_add, workspace_create, workspace_personal

pytestmark = pytest.mark.django_db

APPS = ("documents", "conversations", "training", "agents", "workspaces")


def logged_in(client: Any, user: Any) -> Any:
    client.force_login(user)
    return client


def app_urls() -> list[str]:
    """Every route of the app's own pages, with 1 for each id."""
    urls = []
    for resolver in get_resolver().url_patterns:
        if isinstance(resolver, URLResolver) and resolver.namespace in APPS:
            for pattern in resolver.url_patterns:
                assert isinstance(pattern, URLPattern)
                route = str(resolver.pattern) + str(pattern.pattern)
                urls.append("/" + route.replace("<int:pk>", "1").replace("<int:user_id>", "1"))
    return urls


def test_the_app_has_the_pages_of_the_issue() -> None:
    assert len(app_urls()) >= 30


@pytest.mark.parametrize("url", app_urls())
def test_every_page_sends_anonymous_visitors_to_the_login_page(client, url) -> None:
    for response in (client.get(url), client.post(url)):
        assert response.status_code in (302, 405), url
        if response.status_code == 302:
            assert response["Location"].startswith("/accounts/login/?next="), url


def test_the_home_page_leads_to_the_documents(client, alice) -> None:
    response = logged_in(client, alice).get("/", follow=True)
    assert response.redirect_chain[-1][0] == "/documents/"


def test_the_login_page_logs_in(client, alice) -> None:
    page = client.get("/accounts/login/?next=/agents/")
    assert page.status_code == 200 and "Log in" in page.content.decode()
    credentials = {"username": "alice", "password": "alice-Secret-123", "next": "/agents/"}
    response = client.post("/accounts/login/", credentials)
    assert response["Location"] == "/agents/"


def test_a_wrong_password_says_so(client, alice) -> None:
    response = client.post("/accounts/login/", {"username": "alice", "password": "nope"})
    assert "do not match" in response.content.decode()


def test_it_lists_the_users_workspaces_with_roles(client, alice) -> None:
    workspace_create(name="Support team", admin=alice)
    body = logged_in(client, alice).get("/workspaces/").content.decode()
    assert "alice&#x27;s workspace" in body and "Support team" in body and "Admin" in body


def test_an_admin_adds_a_reviewer(client, alice, bob) -> None:
    team = workspace_create(name="Team", admin=alice)
    logged_in(client, alice).post(f"/workspaces/{team.pk}/members/", {"username": "bob", "role": "reviewer"})
    assert Membership.objects.get(workspace=team, user=bob).role == "reviewer"


def test_an_unknown_login_name_is_refused_next_to_the_field(client, alice) -> None:
    team = workspace_create(name="Team", admin=alice)
    response = logged_in(client, alice).post(f"/workspaces/{team.pk}/members/", {"username": "zed", "role": "member"})
    assert response.status_code == 400 and "No user has this login name." in response.content.decode()


def test_a_member_cannot_add_members(client, alice, bob, charlie) -> None:
    team = workspace_personal(user=alice)
    membership_add(actor=alice, workspace=team, user=bob, role=Membership.Role.MEMBER)
    response = logged_in(client, bob).post(
        f"/workspaces/{team.pk}/members/", {"username": "charlie", "role": "admin"}, follow=True
    )
    assert "Only admins of this workspace can add members." in response.content.decode()
    assert not Membership.objects.filter(user=charlie, workspace=team).exists()


def test_charlie_cannot_see_alices_workspace(client, alice, charlie) -> None:
    team = workspace_personal(user=alice)
    assert logged_in(client, charlie).get(f"/workspaces/{team.pk}/").status_code == 404


def test_an_admin_removes_a_member(client, alice, bob) -> None:
    team = workspace_personal(user=alice)
    membership_add(actor=alice, workspace=team, user=bob)
    logged_in(client, alice).post(f"/workspaces/{team.pk}/members/{bob.pk}/remove/")
    assert not Membership.objects.filter(user=bob, workspace=team).exists()


def test_a_user_creates_sees_once_and_revokes_an_api_token(client, alice, charlie) -> None:
    from workspaces.models import ApiToken
    from workspaces.services import api_token_authenticate

    logged_in(client, alice)
    page = client.post("/workspaces/tokens/", {"name": "nightly export"})
    assert page.status_code == 200
    secret = page.context["secret"]
    assert secret and secret in page.content.decode()
    assert api_token_authenticate(raw=secret) == alice
    assert secret not in client.get("/workspaces/tokens/").content.decode()  # shown once
    token = ApiToken.objects.get(user=alice)
    client.force_login(charlie)
    assert client.post(f"/workspaces/tokens/{token.pk}/revoke/").status_code == 404
    client.force_login(alice)
    client.post(f"/workspaces/tokens/{token.pk}/revoke/")
    assert api_token_authenticate(raw=secret) is None


def test_the_last_admin_cannot_step_down(client, alice, bob) -> None:
    team = workspace_create(name="Team", admin=alice)
    membership_add(actor=alice, workspace=team, user=bob, role=Membership.Role.MEMBER)
    response = logged_in(client, alice).post(f"/workspaces/{team.pk}/members/", {"username": "alice", "role": "member"})
    assert response.status_code == 400
    assert "keeps at least one admin" in response.content.decode()
    assert Membership.objects.get(workspace=team, user=alice).role == "admin"


def test_an_admin_steps_down_once_another_admin_is_there(client, alice, bob) -> None:
    team = workspace_create(name="Team", admin=alice)
    membership_add(actor=alice, workspace=team, user=bob, role=Membership.Role.ADMIN)
    logged_in(client, alice).post(f"/workspaces/{team.pk}/members/", {"username": "alice", "role": "reviewer"})
    assert Membership.objects.get(workspace=team, user=alice).role == "reviewer"
    assert list(Membership.objects.filter(workspace=team, role="admin").values_list("user__username", flat=True)) == [
        "bob"
    ]
