"""Context rules set by people (the agent's page, the API, the review card) change what retrieval
puts in the agent's context; the "why this answer" view shows that choice, rule and score included,
and what the agent's context budget left out."""
from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from django.test import Client

from agents.retrieval import explain, forget_indexes, retrieve
from agents.tests.test_retrieval import material
from testing.members import add_member
from training.models import Assignment
from workspaces.services import workspace_personal

pytestmark = pytest.mark.django_db

QUESTION = "How do I get a refund for my order?"


@pytest.fixture(autouse=True)
def fresh_indexes() -> Iterator[None]:
    forget_indexes()
    yield
    forget_indexes()


@pytest.fixture
def shelf(agent) -> dict[str, Any]:
    """alice's support agent with three approved completions: one about refunds, two not."""
    return {
        "refund": material(agent, "How are refunds paid?", "Refunds go back to the card within 5 days."),
        "opening": material(agent, "When is the shop open?", "Monday to Friday, 9 to 5."),
        "vip": material(agent, "Is there a VIP line?", "Gold members call 0800 123."),
    }


def logged_in(user: Any) -> Client:
    client = Client()
    client.force_login(user)
    return client


def ids(found: Any) -> list[int]:
    return [item.completion_id for item in found]


def test_always_set_on_the_agents_page_puts_unrelated_material_in_every_turn(alice, agent, shelf) -> None:
    assert ids(retrieve(agent, QUESTION)) == [shelf["refund"].pk]
    response = logged_in(alice).post(f"/agents/{agent.pk}/material/", {
        "scope": "assigned", "selection": "selected", "ids": [shelf["opening"].pk], "action": "rule", "rule": "always",
    }, follow=True)
    assert "1 completion of Support: include always." in response.content.decode()
    assert ids(retrieve(agent, QUESTION)) == [shelf["opening"].pk, shelf["refund"].pk]
    page = logged_in(alice).get(f"/agents/{agent.pk}/").content.decode()
    assert f'data-rule="{shelf["opening"].pk}">Include always' in page


def test_the_tags_rule_set_through_the_api_includes_material_only_for_tagged_conversations(alice, agent, shelf):
    response = logged_in(alice).post(
        f"/api/agents/{agent.pk}/rules",
        {"completion_ids": [shelf["vip"].pk, 999_999], "rule": "tags", "tags": [" VIP ", "gold", "vip"]},
        content_type="application/json",
    )
    assert response.status_code == 200
    assert response.json() == {"done": 1, "skipped": {"not found": [999_999]}}
    assert Assignment.objects.get(completion=shelf["vip"]).tags == ["VIP", "gold"]
    assert shelf["vip"].pk not in ids(retrieve(agent, QUESTION))
    found = retrieve(agent, QUESTION, tags=["vip"])
    assert [(item.completion_id, item.rule) for item in found][0] == (shelf["vip"].pk, "tags")
    # The completion's API record says it too.
    record = logged_in(alice).get(f"/api/completions/{shelf['vip'].pk}").json()
    assert record["context_rules"] == [{"agent": agent.pk, "rule": "tags", "tags": ["VIP", "gold"]}]


def test_the_tags_rule_needs_a_tag(alice, agent, shelf) -> None:
    response = logged_in(alice).post(
        f"/api/agents/{agent.pk}/rules", {"completion_ids": [shelf["vip"].pk], "rule": "tags"},
        content_type="application/json",
    )
    assert response.status_code == 400
    assert response.json()["detail"] == "The 'tags' rule needs at least one tag."
    assert Assignment.objects.get(completion=shelf["vip"]).rule == "retrieve"


def test_an_unknown_rule_is_a_400_not_a_500(alice, agent, shelf) -> None:
    api = logged_in(alice).post(
        f"/api/agents/{agent.pk}/rules", {"completion_ids": [shelf["vip"].pk], "rule": "sometimes"},
        content_type="application/json",
    )
    assert api.status_code == 400
    page = logged_in(alice).post(f"/agents/{agent.pk}/material/", {
        "scope": "assigned", "selection": "all", "action": "rule", "rule": "sometimes",
    }, follow=True)
    assert page.status_code == 200 and "Unknown rule &#x27;sometimes&#x27;" in page.content.decode()
    assert set(Assignment.objects.values_list("rule", flat=True)) == {"retrieve"}


def test_tags_edited_on_the_review_card_change_retrieval(alice, agent, shelf) -> None:
    client = logged_in(alice)
    card = client.get(f"/jobs/completions/{shelf['opening'].pk}/").content.decode()
    assert f'data-rule-form="{agent.pk}"' in card and 'name="tags"' in card
    response = client.post(f"/jobs/completions/{shelf['opening'].pk}/rule/",
                           {"agent": agent.pk, "rule": "tags", "tags": "hours, opening"}, HTTP_HX_REQUEST="true")
    assert response.status_code == 200
    assert 'value="hours, opening"' in response.content.decode()  # the card, re-rendered
    assert shelf["opening"].pk not in ids(retrieve(agent, QUESTION, tags=["billing"]))
    assert ids(retrieve(agent, QUESTION, tags=["Hours"]))[0] == shelf["opening"].pk


def test_a_teammate_sees_the_rule_on_the_card_but_cannot_change_it(alice, bob, agent, shelf) -> None:
    add_member(actor=alice, workspace=workspace_personal(user=alice), user=bob, role="reviewer")
    client = logged_in(bob)
    card = client.get(f"/jobs/completions/{shelf['opening'].pk}/").content.decode()
    assert "data-rule-form" not in card and "In Support’s context: when relevant (retrieved)" in card
    response = client.post(f"/jobs/completions/{shelf['opening'].pk}/rule/",
                           {"agent": agent.pk, "rule": "always", "tags": ""})
    assert response.status_code == 403
    assert Assignment.objects.get(completion=shelf["opening"]).rule == "retrieve"


def test_why_this_answer_lists_the_material_with_rule_score_and_tokens(alice, agent, shelf) -> None:
    Assignment.objects.filter(completion=shelf["opening"]).update(rule="always")
    page = logged_in(alice).get(f"/agents/{agent.pk}/why/", {"q": QUESTION})
    assert page.status_code == 200
    found = page.context["found"]
    assert [(item.completion_id, item.rule) for item in found.picked] == [
        (shelf["opening"].pk, "always"), (shelf["refund"].pk, "retrieve"),
    ]
    html = page.content.decode()
    rows = html.split('data-picked="')[1:]
    assert rows[0].startswith(str(shelf["opening"].pk)) and "When is the shop open?" in rows[0]
    assert '<td data-rule>always</td>' in rows[0] and "—" in rows[0]  # always: no score
    refund = found.picked[1]
    assert refund.score and refund.score > 0
    assert f"<td data-score>{refund.score:.3f}</td>" in rows[1]
    assert f"<td data-tokens>{refund.tokens}</td>" in rows[1]
    assert "Left out by the budget" not in html


def test_the_context_budget_set_on_the_edit_page_leaves_material_out_and_says_so(alice, agent, shelf) -> None:
    Assignment.objects.filter(completion=shelf["opening"]).update(rule="always")
    needed = explain(agent, QUESTION).picked[0].tokens  # the "always" one alone
    client = logged_in(alice)
    response = client.post(f"/agents/{agent.pk}/edit/", {
        "name": "Support", "system_prompt": "Help.", "model": "", "temperature": "", "top_p": "", "max_tokens": "",
        "frequency_penalty": "", "context_budget": needed,
    })
    assert response.status_code == 302
    agent.refresh_from_db()
    assert agent.context_budget == needed
    assert ids(retrieve(agent, QUESTION)) == [shelf["opening"].pk]  # the refund answer no longer fits
    page = client.get(f"/agents/{agent.pk}/why/", {"q": QUESTION}).content.decode()
    assert "Left out by the budget" in page
    assert f'data-left-out="{shelf["refund"].pk}"' in page
    assert f"{needed} of {needed} tokens used" in page


def test_the_context_budget_and_the_explanation_through_the_api(alice, agent, shelf) -> None:
    client = logged_in(alice)
    patched = client.patch(f"/api/agents/{agent.pk}", {"context_budget": 0}, content_type="application/json")
    assert patched.status_code == 200 and patched.json()["context_budget"] == 0
    found = client.get(f"/api/agents/{agent.pk}/explain", {"q": QUESTION}).json()
    assert found["budget"] == 0 and found["picked"] == []
    assert [item["completion_id"] for item in found["left_out"]] == [shelf["refund"].pk]
    client.patch(f"/api/agents/{agent.pk}", {"context_budget": None}, content_type="application/json")
    found = client.get(f"/api/agents/{agent.pk}/explain", {"q": QUESTION, "tags": ["vip"]}).json()
    assert found["budget"] == 1500
    [picked] = found["picked"]
    assert picked["completion_id"] == shelf["refund"].pk and picked["rule"] == "retrieve" and picked["score"] > 0
    too_big = client.patch(f"/api/agents/{agent.pk}", {"context_budget": -1}, content_type="application/json")
    assert too_big.status_code == 400


def test_an_outsider_gets_404_from_why_this_answer(charlie, agent, shelf) -> None:
    assert logged_in(charlie).get(f"/agents/{agent.pk}/why/", {"q": QUESTION}).status_code == 404
    assert logged_in(charlie).get(f"/api/agents/{agent.pk}/explain", {"q": QUESTION}).status_code == 404
