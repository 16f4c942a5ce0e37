"""Agent pages: dashboard counts, create and edit, bulk material, dataset downloads, scoping."""
from __future__ import annotations

import json
from typing import Any

import pytest

from agents.models import Agent
from masscer.tests import web
from masscer.tests.web import fast_passwords  # noqa: F401 - autouse fixture
from training.models import Assignment, Completion

pytestmark = pytest.mark.django_db


def logged_in(client: Any, user: Any) -> Any:
    client.force_login(user)
    return client


def agent_params(**extra: Any) -> dict[str, Any]:
    data = {"name": "Support", "system_prompt": "You help customers.", "model": "", "temperature": "0.2"}
    return data | {"top_p": "", "max_tokens": "", "frequency_penalty": ""} | extra


@pytest.mark.parametrize("url", ["/agents/", "/agents/new/", "/agents/1/", "/agents/1/edit/", "/agents/1/export/"])
def test_it_sends_anonymous_visitors_to_the_login_page(client, url) -> None:
    assert client.get(url)["Location"].startswith("/accounts/login/")


def test_the_dashboard_counts_pending_approved_and_rejected_material(client, alice) -> None:
    support = web.agent(alice, "Support")
    web.agent(alice, "Sales")
    made = web.completions(web.job(alice), 6, agent_=support)
    Completion.objects.filter(pk__in=[c.pk for c in made[:3]]).update(status="approved")
    Completion.objects.filter(pk=made[3].pk).update(status="rejected")
    body = logged_in(client, alice).get("/agents/").content.decode()
    row = body[body.index(f'id="agent-{support.pk}"') :]
    assert '<td class="num" data-count="pending"><a href="/jobs/review/?agent=' in row
    for key, value in (("pending", 2), ("approved", 3), ("rejected", 1)):
        cell = row[row.index(f'data-count="{key}"') :]
        assert f">{value}</a>" in cell[:200]
    assert "Sales" in body


def test_it_creates_an_agent(client, alice) -> None:
    response = logged_in(client, alice).post("/agents/new/", agent_params(), follow=True)
    agent = Agent.objects.get()
    assert (agent.name, agent.slug, agent.system_prompt, agent.temperature) == (
        "Support",
        "support",
        "You help customers.",
        0.2,
    )
    assert "Created the agent “Support”." in response.content.decode()


def test_a_duplicate_name_is_refused_next_to_the_name(client, alice) -> None:
    web.agent(alice, "Support")
    body = logged_in(client, alice).post("/agents/new/", agent_params()).content.decode()
    assert "already has an agent called" in body[body.index('id="field-name"') :][:800]


def test_it_edits_an_agent_and_keeps_its_slug(client, alice) -> None:
    agent = web.agent(alice, "Support")
    logged_in(client, alice).post(
        f"/agents/{agent.pk}/edit/", agent_params(name="Support desk", model="gpt-4o-mini", max_tokens="500")
    )
    agent.refresh_from_db()
    assert (agent.name, agent.slug, agent.model, agent.max_tokens) == ("Support desk", "support", "gpt-4o-mini", 500)


def test_parameters_out_of_range_are_refused(client, alice) -> None:
    agent = web.agent(alice)
    body = logged_in(client, alice).post(f"/agents/{agent.pk}/edit/", agent_params(top_p="3")).content.decode()
    assert "less than or equal to 1" in body


def test_it_assigns_ticked_completions_to_the_agent(client, alice) -> None:
    support = web.agent(alice)
    made = web.completions(web.job(alice), 3)
    logged_in(client, alice).post(
        f"/agents/{support.pk}/material/",
        {"action": "assign", "selection": "selected", "scope": "unassigned", "ids": [made[0].pk, made[1].pk]},
    )
    assert set(support.completions.values_list("pk", flat=True)) == {made[0].pk, made[1].pk}


def test_it_moves_all_matching_completions_to_another_agent(client, alice) -> None:
    support, sales = web.agent(alice, "Support"), web.agent(alice, "Sales")
    made = web.completions(web.job(alice), 4, agent_=support)
    Completion.objects.filter(pk=made[0].pk).update(status="approved")
    response = logged_in(client, alice).post(
        f"/agents/{support.pk}/material/",
        {"action": "move", "selection": "all", "scope": "assigned", "status": "pending", "target": sales.pk},
        follow=True,
    )
    assert set(sales.completions.values_list("pk", flat=True)) == {c.pk for c in made[1:]}
    assert list(support.completions.values_list("pk", flat=True)) == [made[0].pk]
    assert "Moved 3 completions from Support to Sales." in response.content.decode()


def test_it_unassigns_and_copies(client, alice) -> None:
    support, sales = web.agent(alice, "Support"), web.agent(alice, "Sales")
    made = web.completions(web.job(alice), 2, agent_=support)
    logged_in(client, alice)
    url = f"/agents/{support.pk}/material/"
    client.post(url, {"action": "copy", "selection": "all", "scope": "assigned", "target": sales.pk})
    assert sales.completions.count() == 2 and support.completions.count() == 2
    client.post(url, {"action": "unassign", "selection": "selected", "scope": "assigned", "ids": [made[0].pk]})
    assert list(support.completions.values_list("pk", flat=True)) == [made[1].pk]


def test_nothing_ticked_says_so(client, alice) -> None:
    support = web.agent(alice)
    response = logged_in(client, alice).post(
        f"/agents/{support.pk}/material/", {"action": "assign", "selection": "selected"}, follow=True
    )
    assert "Tick one or more completions first" in response.content.decode()


def test_charlie_cannot_assign_alices_completions_to_his_agent(client, alice, charlie) -> None:
    made = web.completions(web.job(alice), 2)
    mine = web.agent(charlie, "Mine")
    logged_in(client, charlie).post(
        f"/agents/{mine.pk}/material/", {"action": "assign", "selection": "selected", "ids": [c.pk for c in made]}
    )
    assert not Assignment.objects.exists()


def test_charlie_cannot_move_to_alices_agent(client, alice, charlie) -> None:
    theirs = web.agent(alice, "Theirs")
    mine = web.agent(charlie, "Mine")
    web.completions(web.job(charlie), 2, agent_=mine)
    response = logged_in(client, charlie).post(
        f"/agents/{mine.pk}/material/", {"action": "move", "selection": "all", "target": theirs.pk}, follow=True
    )
    assert "Choose the agent to move or assign them to." in response.content.decode()
    assert not theirs.completions.exists()


def test_the_openai_download_has_one_line_per_approved_completion(client, alice) -> None:
    support = web.agent(alice)
    made = web.completions(web.job(alice), 3, agent_=support)
    Completion.objects.filter(pk__in=[made[0].pk, made[1].pk]).update(status="approved")
    response = logged_in(client, alice).get(f"/agents/{support.pk}/export/?format=openai-jsonl")
    assert response["Content-Disposition"] == 'attachment; filename="support-openai-jsonl-approved.jsonl"'
    lines = b"".join(response.streaming_content).decode().splitlines()
    assert len(lines) == 2
    assert [m["role"] for m in json.loads(lines[0])["messages"]] == ["system", "user", "assistant"]


def test_the_records_download_includes_every_status_on_request(client, alice) -> None:
    support = web.agent(alice)
    web.completions(web.job(alice), 3, agent_=support)
    response = logged_in(client, alice).get(f"/agents/{support.pk}/export/?format=records&status=all")
    lines = b"".join(response.streaming_content).decode().splitlines()
    assert len(lines) == 3 and json.loads(lines[0])["status"] == "pending"


def test_an_unknown_format_is_not_found(client, alice) -> None:
    support = web.agent(alice)
    assert logged_in(client, alice).get(f"/agents/{support.pk}/export/?format=xml").status_code == 404


@pytest.mark.parametrize("url", ["/agents/{pk}/", "/agents/{pk}/edit/", "/agents/{pk}/export/?format=openai-jsonl"])
def test_it_hides_alices_agents_from_charlie(client, alice, charlie, url) -> None:
    support = web.agent(alice)
    assert logged_in(client, charlie).get(url.format(pk=support.pk)).status_code == 404


def test_the_playground_link_appears_only_when_the_route_exists(client, alice) -> None:
    from django.urls import NoReverseMatch, reverse

    support = web.agent(alice)
    body = logged_in(client, alice).get(f"/agents/{support.pk}/").content.decode()
    try:
        url = reverse("agents:playground", args=[support.pk])
    except NoReverseMatch:
        assert "Chat with Support" not in body
    else:
        assert f'href="{url}"' in body


@pytest.mark.parametrize("rows", [10, 200])
def test_the_dashboard_runs_the_same_queries_for_10_and_200(client, alice, rows, django_assert_num_queries) -> None:
    made = web.agents(alice, rows)
    web.completions(web.job(alice), 3, agent_=made[0])
    logged_in(client, alice)
    # session, user, count, one page of agents with their three counts (one annotated query)
    with django_assert_num_queries(4):
        response = client.get("/agents/")
    assert response.content.decode().count('<tr id="agent-') == min(rows, 25)


@pytest.mark.parametrize("rows", [10, 200])
@pytest.mark.parametrize(
    ("query", "queries"),
    [
        # session, user, agent, counts by status (they give the list's length), the page's ids,
        # its rows, agents prefetch, other agents, jobs
        ("", 9),
        ("?status=approved&page=3", 9),
        # filters the counts do not answer: one COUNT more
        ("?q=Question", 10),
        ("?scope=all", 10),
    ],
)
def test_the_material_list_runs_the_same_queries_for_10_and_200(
    client, alice, rows, query, queries, django_assert_num_queries
) -> None:
    support = web.agent(alice)
    made = web.completions(web.job(alice), rows, agent_=support)
    Completion.objects.filter(pk__in=[c.pk for c in made[::2]]).update(status="approved")
    logged_in(client, alice)
    with django_assert_num_queries(queries):
        response = client.get(f"/agents/{support.pk}/{query}")
    shown = rows // 2 if "approved" in query else rows  # page 3 of 5 rows is their last page
    assert response.content.decode().count('name="ids" value=') == min(shown, 25)


def test_the_material_list_counts_what_it_shows(client, alice) -> None:
    support, sales = web.agent(alice, "Support"), web.agent(alice, "Sales")
    made = web.completions(web.job(alice), 7, agent_=support)
    web.completions(web.job(alice), 2, agent_=sales)
    Completion.objects.filter(pk__in=[c.pk for c in made[:3]]).update(status="approved")
    Completion.objects.filter(pk=made[3].pk).update(status="rejected")
    logged_in(client, alice)
    body = client.get(f"/agents/{support.pk}/").content.decode()
    assert [body[body.index(f'data-count="{key}"') :][:60].split(">")[1].split("<")[0] for key in
            ("pending", "approved", "rejected")] == ["3", "3", "1"]
    assert "All 7 matching the filters" in body
    assert "All 3 matching the filters" in client.get(f"/agents/{support.pk}/?status=approved").content.decode()
    assert "All 9 matching the filters" in client.get(f"/agents/{support.pk}/?scope=all").content.decode()
    assert "All 2 matching the filters" in client.get(f"/agents/{support.pk}/?scope=unassigned").content.decode()


def test_the_material_list_pages_newest_first(client, alice) -> None:
    support = web.agent(alice)
    made = web.completions(web.job(alice), 30, agent_=support)
    body = logged_in(client, alice).get(f"/agents/{support.pk}/?page=2").content.decode()
    shown = [int(part.split('"')[0]) for part in body.split('name="ids" value="')[1:]]
    assert shown == [c.pk for c in reversed(made)][25:30]
