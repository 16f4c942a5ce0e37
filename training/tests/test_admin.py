"""The review back office through the Django test client: filters, actions, edits, roles, queries.

alice is a superuser and the admin of her workspace; bob is staff and a reviewer there;
charlie is staff and a plain member there; dave is staff and belongs to no workspace of hers.
"""
from __future__ import annotations

from typing import Any

import pytest
from django.contrib.auth.models import Permission
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext

from testing.members import add_member
from training.generation import work_item_run
from training.models import Assignment, Completion, TrainingJob, WorkItem
from training.services import job_create
from workspaces.services import workspace_personal

from .factories import make_agent, make_chunk, make_completions, make_conversation, make_document, make_job, numbered
from .test_dedupe import ORIGINAL, PARAPHRASE
from .test_generation import run_job

pytestmark = pytest.mark.django_db

URL = "/admin/training/completion/"


def staff(user: Any) -> Any:
    user.is_staff = True
    user.save()
    user.user_permissions.add(*Permission.objects.filter(content_type__app_label="training"))
    return user


@pytest.fixture
def team(alice, bob, charlie, django_user_model) -> dict[str, Any]:
    alice.is_staff = alice.is_superuser = True
    alice.save()
    workspace = workspace_personal(user=alice)
    add_member(actor=alice, workspace=workspace, user=staff(bob), role="reviewer")
    add_member(actor=alice, workspace=workspace, user=staff(charlie), role="member")
    dave = staff(django_user_model.objects.create_user("dave", password="dave-Secret-123"))
    agent = make_agent(alice)
    job = make_job(alice)
    chunk = make_chunk(make_document(alice))
    rows = make_completions(job, chunk, numbered(4), agents=[agent])
    return {"workspace": workspace, "agent": agent, "job": job, "chunk": chunk, "rows": rows, "dave": dave}


def client_for(user: Any) -> Client:
    client = Client()
    client.force_login(user)
    return client


def act(client: Client, action: str, rows: list[Completion], **extra: Any) -> Any:
    data = {"action": action, "_selected_action": [row.pk for row in rows], "index": 0, **extra}
    return client.post(URL, data, follow=True)


def messages_of(response: Any) -> list[str]:
    return [str(message) for message in response.context["messages"]]


# --- the list -----------------------------------------------------------------------------


def changelist_queries(client: Client, url: str = URL) -> int:
    with CaptureQueriesContext(connection) as queries:
        response = client.get(url)
    assert response.status_code == 200
    return len(queries)


def many_rows(team: dict[str, Any], alice: Any, bob: Any, count: int, start: int) -> None:
    """Rows spread over new documents, conversations and agents, reviewed: every relation varies."""
    for n in range(count):
        source = make_document(alice, title=f"D{start + n}") if n % 2 else make_conversation(alice, title=f"C{n}")
        agent = make_agent(alice, slug=f"agent-{start + n}")
        make_completions(make_job(alice), make_chunk(source), numbered(1, start=start + n), agents=[agent],
                         status="approved", reviewed_by=bob)


def test_the_list_costs_the_same_queries_for_10_and_50_rows(alice, bob, team) -> None:
    Completion.objects.all().delete()
    client = client_for(bob)
    many_rows(team, alice, bob, 10, start=100)
    ten = changelist_queries(client)
    many_rows(team, alice, bob, 40, start=200)
    fifty = changelist_queries(client)
    response = client.get(URL)
    assert len(response.context["cl"].result_list) == 50
    assert ten == fifty


def test_filters_and_search_keep_the_query_count_flat(alice, bob, team) -> None:
    client = client_for(bob)
    url = URL + f"?status__exact=pending&agent={team['agent'].pk}&source_type=document&q=case"
    few = changelist_queries(client, url)
    make_completions(team["job"], team["chunk"], numbered(30, start=50), agents=[team["agent"]])
    assert changelist_queries(client, url) == few


def test_it_filters_by_status_agent_job_source_and_model(alice, team) -> None:
    client = client_for(alice)
    other = make_agent(alice, slug="sales")
    conversation_row = make_completions(
        make_job(alice), make_chunk(make_conversation(alice)), numbered(1, start=90), agents=[other],
        status="approved", model="other-model",
    )[0]

    def ids(query: str) -> set[int]:
        return {row.pk for row in client.get(URL + query).context["cl"].result_list}

    everyone = {row.pk for row in team["rows"]} | {conversation_row.pk}
    assert ids("") == everyone
    assert ids("?status__exact=approved") == {conversation_row.pk}
    assert ids(f"?agent={other.pk}") == {conversation_row.pk}
    assert ids(f"?job={team['job'].pk}") == {row.pk for row in team["rows"]}
    assert ids("?source_type=conversation") == {conversation_row.pk}
    assert ids("?source_type=document") == {row.pk for row in team["rows"]}
    assert ids("?model=other-model") == {conversation_row.pk}
    assert ids("?agent=not-a-number") == everyone


def test_search_looks_in_questions_and_answers(alice, team) -> None:
    client = client_for(alice)
    target = team["rows"][2]
    word = target.answer.split()[3].strip(",.")
    found = {row.pk for row in client.get(URL, {"q": f"case 2 {word}"}).context["cl"].result_list}
    assert target.pk in found and len(found) == 1


def test_staff_see_only_their_workspaces(team) -> None:
    response = client_for(team["dave"]).get(URL)
    assert response.status_code == 200 and list(response.context["cl"].result_list) == []
    assert client_for(team["dave"]).get(f"{URL}{team['rows'][0].pk}/change/").status_code == 302


# --- actions ---------------------------------------------------------------------------------


def test_a_reviewer_approves_and_rejects_in_bulk(bob, team) -> None:
    client = client_for(bob)
    response = act(client, "approve", team["rows"][:2])
    assert "2 completions marked approved." in messages_of(response)
    act(client, "reject", team["rows"][2:3])
    rows = list(Completion.objects.order_by("pk"))
    assert [row.status for row in rows] == ["approved", "approved", "rejected", "pending"]
    assert all(row.reviewed_by == bob and row.reviewed_at for row in rows[:3])


def test_a_plain_member_cannot_approve(charlie, team) -> None:
    response = act(client_for(charlie), "approve", team["rows"])
    assert "0 completions marked approved." in messages_of(response)
    assert any("Skipped 4 (you are not a reviewer in their workspace)" in m for m in messages_of(response))
    assert not Completion.objects.exclude(status="pending").exists()


def test_the_approve_action_costs_the_same_queries_for_2_and_20_rows(bob, team) -> None:
    client = client_for(bob)
    with CaptureQueriesContext(connection) as few:
        act(client, "approve", team["rows"][:2])
    more = make_completions(team["job"], team["chunk"], numbered(20, start=40), agents=[team["agent"]])
    with CaptureQueriesContext(connection) as many:
        act(client, "approve", more)
    assert len(few) == len(many)


def test_assign_and_unassign_to_the_chosen_agent(alice, team) -> None:
    sales = make_agent(alice, slug="sales")
    client = client_for(alice)  # the agent's creator
    response = act(client, "assign", team["rows"][:3], agent=sales.pk)
    assert "3 completions assigned to Sales." in messages_of(response)
    assert Assignment.objects.filter(agent=sales).count() == 3
    act(client, "unassign", team["rows"][:1], agent=sales.pk)
    assert Assignment.objects.filter(agent=sales).count() == 2


def test_a_plain_member_cannot_assign_to_alices_agent(charlie, alice, team) -> None:
    sales = make_agent(alice, slug="sales")
    response = act(client_for(charlie), "assign", team["rows"][:3], agent=sales.pk)
    assert "Only the creator of this agent or an admin of its workspace may change its material." in messages_of(
        response
    )
    assert not Assignment.objects.filter(agent=sales).exists()


def test_assigning_needs_an_agent_of_the_users_workspaces(charlie, team, django_user_model) -> None:
    outsider = django_user_model.objects.create_user("eve")
    foreign = make_agent(outsider, slug="foreign")
    response = act(client_for(charlie), "assign", team["rows"][:1], agent=foreign.pk)
    assert "Choose one of your agents in the action bar first." in messages_of(response)
    assert not Assignment.objects.filter(agent=foreign).exists()


def test_the_action_bar_offers_only_the_users_agents(charlie, team, django_user_model) -> None:
    make_agent(django_user_model.objects.create_user("eve"), slug="foreign")
    form = client_for(charlie).get(URL).context["action_form"]
    assert [agent.slug for agent in form.fields["agent"].queryset] == ["support"]


def test_regenerate_rejects_and_makes_as_many_new_ones(
    alice, ready_document, fake_llm, django_capture_on_commit_callbacks
) -> None:
    alice.is_staff = alice.is_superuser = True
    alice.save()
    agent = make_agent(alice)
    job = job_create(owner=alice, count=4, agents=[agent], documents=[ready_document(alice, pages=1)])
    run_job(job)
    old = list(Completion.objects.filter(job=job).order_by("pk"))
    assert job.status == TrainingJob.Status.COMPLETED and len(old) == 4
    with django_capture_on_commit_callbacks() as sent:
        response = act(client_for(alice), "regenerate", old[:2])
    assert "2 completions rejected and sent for regeneration." in messages_of(response)
    assert len(sent) == 1  # one generation task for the one work item, after commit
    job.refresh_from_db()
    assert job.status == TrainingJob.Status.GENERATING
    for item in WorkItem.objects.filter(job=job, status=WorkItem.Status.PENDING):
        work_item_run(item_id=item.pk)  # what the worker does with the task sent after commit
    job.refresh_from_db()
    assert job.status == TrainingJob.Status.COMPLETED and job.shortfall == 0
    assert job.requested_count == 6 and Completion.objects.filter(job=job).count() == 6
    assert set(Completion.objects.filter(job=job, status="rejected").values_list("pk", flat=True)) == {
        old[0].pk, old[1].pk
    }
    fresh = Completion.objects.filter(job=job).exclude(pk__in=[row.pk for row in old])
    assert all(list(row.agents.all()) == [agent] for row in fresh)
    assert not {row.question for row in fresh} & {row.question for row in old}


def test_regenerate_leaves_running_jobs_alone(alice, team) -> None:
    TrainingJob.objects.filter(pk=team["job"].pk).update(status=TrainingJob.Status.GENERATING)
    response = act(client_for(alice), "regenerate", team["rows"][:1])
    assert any("its job is still running or was cancelled" in m for m in messages_of(response))
    assert Completion.objects.get(pk=team["rows"][0].pk).status == "pending"


def test_near_duplicates_are_flagged_then_kept_or_merged(alice, bob, team) -> None:
    sales = make_agent(alice, slug="sales")
    original = make_completions(team["job"], team["chunk"], [ORIGINAL], agents=[team["agent"]])[0]
    paraphrase = make_completions(team["job"], team["chunk"], [PARAPHRASE], agents=[team["agent"], sales])[0]
    client = client_for(bob)
    response = act(client, "flag_duplicates", [original], agent=team["agent"].pk)
    assert "Support: 1 near-duplicate groups, 1 completions flagged." in messages_of(response)
    assert Completion.objects.get(pk=paraphrase.pk).duplicate_of_id == original.pk
    flagged = client.get(URL + "?duplicate=any").context["cl"].result_list
    assert {row.pk for row in flagged} == {original.pk, paraphrase.pk}
    response = act(client, "merge", [original])
    assert "1 completions merged and rejected as duplicates." in messages_of(response)
    assert Completion.objects.get(pk=paraphrase.pk).status == "rejected"
    assert set(Assignment.objects.filter(completion=original).values_list("agent__slug", flat=True)) == {
        "support", "sales"
    }


def test_keep_one_by_a_member_changes_nothing(bob, charlie, team) -> None:
    original = make_completions(team["job"], team["chunk"], [ORIGINAL], agents=[team["agent"]])[0]
    paraphrase = make_completions(team["job"], team["chunk"], [PARAPHRASE], agents=[team["agent"]])[0]
    refused = act(client_for(charlie), "flag_duplicates", [original], agent=team["agent"].pk)
    assert any("Only reviewers and admins of this workspace may flag near-duplicates." in m
               for m in messages_of(refused))
    assert not Completion.objects.filter(duplicate_of__isnull=False).exists()
    act(client_for(bob), "flag_duplicates", [original], agent=team["agent"].pk)
    response = act(client_for(charlie), "keep_one", [paraphrase])
    assert any("you are not a reviewer" in m for m in messages_of(response))
    assert not Completion.objects.filter(status="rejected").exists()


# --- editing -----------------------------------------------------------------------------------


def change_form(client: Client, row: Completion, **fields: str) -> Any:
    data = {"question": row.question, "answer": row.answer, "status": row.status, **fields}
    return client.post(f"{URL}{row.pk}/change/", data)


def test_editing_keeps_the_original_and_marks_it_edited(bob, team) -> None:
    row = team["rows"][0]
    response = change_form(client_for(bob), row, question="A better question?", status="approved")
    assert response.status_code == 302
    edited = Completion.objects.get(pk=row.pk)
    assert edited.question == "A better question?" and edited.edited and edited.status == "approved"
    assert edited.original_question == row.question and edited.original_answer == row.answer
    assert edited.reviewed_by == bob and edited.reviewed_at is not None
    # a second edit keeps the first original
    change_form(client_for(bob), edited, answer="A better answer.")
    twice = Completion.objects.get(pk=row.pk)
    assert twice.original_question == row.question and twice.original_answer == row.answer


def test_members_see_the_change_page_read_only(charlie, team) -> None:
    row = team["rows"][0]
    client = client_for(charlie)
    page = client.get(f"{URL}{row.pk}/change/")
    assert page.status_code == 200 and not page.context["has_change_permission"]
    assert change_form(client, row, question="Sneaky?").status_code == 403
    assert Completion.objects.get(pk=row.pk).question == row.question


def list_edit(client: Client, rows: list[Completion], changes: dict[int, dict[str, str]]) -> Any:
    data: dict[str, Any] = {
        "form-TOTAL_FORMS": len(rows), "form-INITIAL_FORMS": len(rows), "form-MIN_NUM_FORMS": 0,
        "form-MAX_NUM_FORMS": 1000, "_save": "Save",
    }
    for n, row in enumerate(rows):
        values = {"id": row.pk, "question": row.question, "answer": row.answer, "status": row.status}
        values.update(changes.get(row.pk, {}))
        data.update({f"form-{n}-{key}": value for key, value in values.items()})
    return client.post(URL, data)


def test_editing_in_the_list_goes_through_the_review_service(bob, team) -> None:
    rows = sorted(team["rows"], key=lambda row: -row.pk)  # the list's order: newest first
    target = rows[1]
    response = list_edit(client_for(bob), rows, {target.pk: {"answer": "Rewritten answer.", "status": "approved"}})
    assert response.status_code == 302
    edited = Completion.objects.get(pk=target.pk)
    assert edited.answer == "Rewritten answer." and edited.edited and edited.original_answer == target.answer
    assert edited.status == "approved" and edited.reviewed_by == bob
    assert Completion.objects.filter(edited=True).count() == 1


def test_editing_in_the_list_is_refused_to_members(charlie, team) -> None:
    rows = sorted(team["rows"], key=lambda row: -row.pk)
    response = list_edit(client_for(charlie), rows, {rows[0].pk: {"status": "approved"}})
    assert response.status_code == 200  # the list again, with the error
    assert "Only reviewers and admins" in response.content.decode()
    assert not Completion.objects.exclude(status="pending").exists()


def test_nobody_adds_or_deletes_completions_here(alice, team) -> None:
    client = client_for(alice)
    assert client.get(URL + "add/").status_code == 403
    assert client.get(f"{URL}{team['rows'][0].pk}/delete/").status_code == 403
    assert "delete_selected" not in client.get(URL).context["action_form"].fields["action"].choices.__str__()
