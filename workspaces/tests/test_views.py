"""Workspace pages, and the rule that every page of the app needs a login."""
from __future__ import annotations

import re
from typing import Any

import pytest
from django.urls import URLPattern, URLResolver, get_resolver

from masscer.tests.web import fast_passwords  # noqa: F401 - autouse fixture
from testing.members import add_member
from workspaces.models import Invitation, Membership
from workspaces.permissions import NotAllowed
from workspaces.services import invitation_accept, workspace_create, workspace_personal

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
                urls.append("/" + re.sub(r"<int:\w+>", "1", route))
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


def test_an_invited_user_joins_only_when_they_accept(client, alice, bob) -> None:
    team = workspace_create(name="Team", admin=alice)
    page = logged_in(client, alice).post(
        f"/workspaces/{team.pk}/members/", {"username": "bob", "role": "reviewer"}, follow=True
    ).content.decode()
    assert "they join when they accept" in page
    assert not Membership.objects.filter(workspace=team, user=bob).exists()  # no consent yet
    assert "Invited, not yet joined" in page and ">bob<" in page
    listing = logged_in(client, bob).get("/workspaces/").content.decode()
    assert "Invitations" in listing and "Team" in listing and "invited by alice" in listing
    invitation = Invitation.objects.get(workspace=team, user=bob)
    assert client.get(f"/workspaces/{team.pk}/").status_code == 404  # not a member before accepting
    client.post(f"/workspaces/invitations/{invitation.pk}/accept/")
    assert Membership.objects.get(workspace=team, user=bob).role == "reviewer"
    assert not Invitation.objects.exists()
    assert client.get(f"/workspaces/{team.pk}/").status_code == 200


def test_a_declined_invitation_adds_nobody(client, alice, bob) -> None:
    team = workspace_create(name="Team", admin=alice)
    logged_in(client, alice).post(f"/workspaces/{team.pk}/members/", {"username": "bob", "role": "member"})
    invitation = Invitation.objects.get(workspace=team, user=bob)
    logged_in(client, bob).post(f"/workspaces/invitations/{invitation.pk}/decline/")
    assert not Invitation.objects.exists()
    assert not Membership.objects.filter(workspace=team, user=bob).exists()


def test_only_the_invited_user_can_answer_an_invitation(client, alice, bob, charlie) -> None:
    team = workspace_create(name="Team", admin=alice)
    logged_in(client, alice).post(f"/workspaces/{team.pk}/members/", {"username": "bob", "role": "admin"})
    invitation = Invitation.objects.get(workspace=team, user=bob)
    for who in (charlie, alice):
        assert logged_in(client, who).post(f"/workspaces/invitations/{invitation.pk}/accept/").status_code == 404
    assert not Membership.objects.filter(workspace=team, user__in=[bob, charlie]).exists()
    with pytest.raises(NotAllowed):
        invitation_accept(user=charlie, invitation=invitation)


def test_an_admin_withdraws_an_invitation(client, alice, bob) -> None:
    team = workspace_create(name="Team", admin=alice)
    logged_in(client, alice).post(f"/workspaces/{team.pk}/members/", {"username": "bob", "role": "member"})
    invitation = Invitation.objects.get(workspace=team, user=bob)
    client.post(f"/workspaces/{team.pk}/invitations/{invitation.pk}/withdraw/")
    assert not Invitation.objects.exists()
    assert logged_in(client, bob).post(f"/workspaces/invitations/{invitation.pk}/accept/").status_code == 404


def test_the_member_form_does_not_tell_which_login_names_exist(client, alice, bob) -> None:
    team = workspace_create(name="Team", admin=alice)
    logged_in(client, alice)
    said = []
    for name in ("bob", "zed"):
        response = client.post(f"/workspaces/{team.pk}/members/", {"username": name, "role": "member"}, follow=True)
        assert response.status_code == 200
        said.append([m.message.replace(name, "NAME") for m in response.context["messages"]])
    assert said[0] == said[1] == ["If “NAME” has an account, they are invited as member: they join when they "
                                  "accept it on their Workspaces page."]
    # Both are kept and listed alike: the pending list tells no more than the answer does.
    assert sorted(Invitation.objects.filter(workspace=team).values_list("username", flat=True)) == ["bob", "zed"]


def test_an_admin_changes_a_members_role_directly(client, alice, bob) -> None:
    team = workspace_create(name="Team", admin=alice)
    add_member(actor=alice, workspace=team, user=bob, role=Membership.Role.MEMBER)
    page = logged_in(client, alice).post(
        f"/workspaces/{team.pk}/members/", {"username": "bob", "role": "reviewer"}, follow=True
    ).content.decode()
    assert "bob is now reviewer here." in page
    assert Membership.objects.get(workspace=team, user=bob).role == "reviewer"


def test_invitations_through_the_api(client, alice, bob) -> None:
    team = workspace_create(name="Team", admin=alice)
    logged_in(client, alice)
    for name in ("bob", "nobody-here"):
        response = client.post(
            f"/api/workspaces/{team.pk}/members", {"username": name, "role": "reviewer"},
            content_type="application/json", HTTP_X_CSRFTOKEN="x",
        )
        assert response.status_code == 202, response.content
        assert "has an account, they are invited" in response.json()["detail"]
    assert not Membership.objects.filter(workspace=team, user=bob).exists()
    logged_in(client, bob)
    invitations = client.get("/api/invitations").json()
    assert [(i["workspace"], i["role"], i["invited_by"]) for i in invitations] == [("Team", "reviewer", "alice")]
    joined = client.post(f"/api/invitations/{invitations[0]['id']}/accept", HTTP_X_CSRFTOKEN="x")
    assert joined.status_code == 200 and joined.json()["role"] == "reviewer"
    assert Membership.objects.get(workspace=team, user=bob).role == "reviewer"
    refused = client.post(f"/api/workspaces/{team.pk}/members", {"username": "alice", "role": "member"},
                          content_type="application/json", HTTP_X_CSRFTOKEN="x")
    assert refused.status_code == 403


def test_a_member_cannot_add_members(client, alice, bob, charlie) -> None:
    team = workspace_personal(user=alice)
    add_member(actor=alice, workspace=team, user=bob, role=Membership.Role.MEMBER)
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
    add_member(actor=alice, workspace=team, user=bob)
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
    add_member(actor=alice, workspace=team, user=bob, role=Membership.Role.MEMBER)
    response = logged_in(client, alice).post(f"/workspaces/{team.pk}/members/", {"username": "alice", "role": "member"})
    assert response.status_code == 400
    assert "keeps at least one admin" in response.content.decode()
    assert Membership.objects.get(workspace=team, user=alice).role == "admin"


def test_an_admin_steps_down_once_another_admin_is_there(client, alice, bob) -> None:
    team = workspace_create(name="Team", admin=alice)
    add_member(actor=alice, workspace=team, user=bob, role=Membership.Role.ADMIN)
    logged_in(client, alice).post(f"/workspaces/{team.pk}/members/", {"username": "alice", "role": "reviewer"})
    assert Membership.objects.get(workspace=team, user=alice).role == "reviewer"
    assert list(Membership.objects.filter(workspace=team, role="admin").values_list("user__username", flat=True)) == [
        "bob"
    ]


def test_an_invitation_to_a_name_without_an_account_waits_for_one(client, alice, django_user_model) -> None:
    """Kept and listed like any other (the pending list tells no more than the form's answer), and
    the person who later signs up with that login name finds it."""
    team = workspace_create(name="Team", admin=alice)
    page = logged_in(client, alice).post(
        f"/workspaces/{team.pk}/members/", {"username": "zed", "role": "reviewer"}, follow=True
    ).content.decode()
    assert "Invited, not yet joined" in page and ">zed<" in page
    zed = django_user_model.objects.create_user("zed", password="zed-Secret-123")
    listing = logged_in(client, zed).get("/workspaces/").content.decode()
    assert "Team" in listing and "invited by alice" in listing
    invitation = Invitation.objects.get(workspace=team, username="zed")
    client.post(f"/workspaces/invitations/{invitation.pk}/accept/")
    assert Membership.objects.get(workspace=team, user=zed).role == "reviewer"
