"""The Train dialog, its estimate and the job pages through the Django test client."""
from __future__ import annotations

from typing import Any

import pytest
from django.urls import reverse

from agents.models import Agent
from documents.models import Document
from masscer.tests import web
from masscer.tests.web import eager_celery, fast_passwords  # noqa: F401 - fixtures
from training.models import Completion, TrainingJob, WorkItem
from workspaces.services import workspace_create

pytestmark = pytest.mark.django_db


def logged_in(client: Any, user: Any) -> Any:
    client.force_login(user)
    return client


def train_data(document: Document, **extra: Any) -> dict[str, Any]:
    data = {
        "document": document.pk,
        "count": 6,
        "model": "fake-model",
        "temperature": "0.3",
        "top_p": "0.9",
        "max_tokens": "",
        "frequency_penalty": "0",
        "stop": "",
        "instructions": "",
    }
    return data | extra


@pytest.mark.parametrize(
    "url", ["/jobs/", "/jobs/new/?document=1", "/jobs/estimate/?document=1", "/jobs/review/", "/jobs/1/"]
)
def test_it_sends_anonymous_visitors_to_the_login_page(client, url) -> None:
    response = client.get(url)
    assert response.status_code == 302 and response["Location"].startswith("/accounts/login/")


def test_the_train_dialog_shows_the_range_agents_parameters_and_an_estimate(client, alice, settings) -> None:
    settings.MASSCER_MAX_COMPLETIONS_PER_JOB = 300
    doc = web.document(alice, title="Handbook")
    web.agent(alice, "Support")
    response = logged_in(client, alice).get(f"/jobs/new/?document={doc.pk}")
    body = response.content.decode()
    assert "Train with this document" in body and "Handbook" in body
    assert "Allowed: 1 to 300." in body and 'max="300"' in body
    assert "Support" in body and 'name="new_agent"' in body
    for name in ("model", "temperature", "top_p", "max_tokens", "frequency_penalty", "stop", "instructions"):
        assert f'name="{name}"' in body
    assert "Randomness, 0–2" in body
    assert 'data-estimate="chunks"' in body and 'data-estimate="calls"' in body
    assert 'name="style"' not in body  # documents are always synthesized


def test_the_dialog_is_a_fragment_for_htmx(client, alice) -> None:
    doc = web.document(alice)
    response = logged_in(client, alice).get(f"/jobs/new/?document={doc.pk}", headers={"HX-Request": "true"})
    body = response.content.decode()
    assert body.lstrip().startswith('<form method="post"') and "<html" not in body
    assert 'hx-post="/jobs/new/"' in body


def test_generate_creates_the_job_and_leads_to_its_page(client, alice) -> None:
    doc = web.document(alice)
    support = web.agent(alice)
    data = train_data(doc, agents=[support.pk], stop="###\nEND", instructions="Audience: new customers.")
    response = logged_in(client, alice).post("/jobs/new/", data)
    job = TrainingJob.objects.get()
    assert response.status_code == 302 and response["Location"] == f"/jobs/{job.pk}/"
    assert job.requested_count == 6 and list(job.agents.all()) == [support] and list(job.documents.all()) == [doc]
    assert (job.model, job.temperature, job.top_p, job.max_tokens) == ("fake-model", 0.3, 0.9, None)
    assert job.stop == ["###", "END"] and job.instructions == "Audience: new customers."


def test_generate_from_the_htmx_dialog_redirects_the_page(client, alice) -> None:
    doc = web.document(alice)
    support = web.agent(alice)
    response = logged_in(client, alice).post(
        "/jobs/new/", train_data(doc, agents=[support.pk]), headers={"HX-Request": "true"}
    )
    assert response["HX-Redirect"] == f"/jobs/{TrainingJob.objects.get().pk}/"


def test_a_budget_is_offered_when_prices_are_configured(client, alice, settings) -> None:
    doc = web.document(alice)
    support = web.agent(alice)
    logged_in(client, alice)
    assert 'name="budget"' not in client.get(f"/jobs/new/?document={doc.pk}").content.decode()
    settings.MASSCER_LLM_PRICES = "fake-model=1:2"
    assert 'name="budget"' in client.get(f"/jobs/new/?document={doc.pk}").content.decode()
    client.post("/jobs/new/", train_data(doc, agents=[support.pk], budget="0.50"))
    assert str(TrainingJob.objects.get().budget) == "0.500000"


def test_an_agent_can_be_created_in_place(client, alice) -> None:
    doc = web.document(alice)
    logged_in(client, alice).post("/jobs/new/", train_data(doc, new_agent="Sales desk"))
    agent = Agent.objects.get()
    assert agent.name == "Sales desk" and agent.slug == "sales-desk"
    assert list(TrainingJob.objects.get().agents.all()) == [agent]


def test_typing_an_existing_agents_name_reuses_it(client, alice) -> None:
    doc = web.document(alice)
    support = web.agent(alice, "Support")
    logged_in(client, alice).post("/jobs/new/", train_data(doc, new_agent="support"))
    assert list(TrainingJob.objects.get().agents.all()) == [support]
    assert Agent.objects.count() == 1


def test_errors_sit_next_to_their_fields(client, alice, settings) -> None:
    settings.MASSCER_MAX_COMPLETIONS_PER_JOB = 100
    doc = web.document(alice)
    response = logged_in(client, alice).post("/jobs/new/", train_data(doc, count=101, temperature="7"))
    body = response.content.decode()
    assert response.status_code == 400
    count_field = body[body.index('id="field-count"') : body.index('id="field-agents"')]
    assert "less than or equal to 100" in count_field
    assert "Choose at least one agent, or type a name to create one." in body
    assert "less than or equal to 2" in body[body.index('id="field-temperature"') :]
    assert not TrainingJob.objects.exists()


def test_a_failed_document_cannot_be_trained(client, alice) -> None:
    doc = web.document(alice, status=Document.Status.FAILED)
    support = web.agent(alice)
    response = logged_in(client, alice).post("/jobs/new/", train_data(doc, agents=[support.pk]))
    assert "could not be read, so it cannot be used" in response.content.decode()
    assert not TrainingJob.objects.exists()


def test_the_conversation_dialog_adds_style_and_redaction(client, alice) -> None:
    conv = web.conversation(alice)
    support = web.agent(alice)
    body = logged_in(client, alice).get(f"/jobs/new/?conversation={conv.pk}").content.decode()
    assert 'name="style"' in body and 'name="redact"' in body and "Mine the questions users asked" in body
    data = train_data(web.document(alice), agents=[support.pk], style="mine", redact="on", count=1)
    del data["document"]
    data["conversation"] = conv.pk
    client.post("/jobs/new/", data)
    job = TrainingJob.objects.get()
    assert job.style == "mine" and job.redact and list(job.conversations.all()) == [conv]


def test_the_estimate_endpoint_counts_calls_tokens_and_cost(client, alice, settings) -> None:
    settings.MASSCER_LLM_PRICES = "fake-model=1:2"
    doc = web.document(alice)
    body = logged_in(client, alice).get(f"/jobs/estimate/?document={doc.pk}&count=6&model=fake-model").content.decode()
    assert "1 <span" in body  # one chunk used
    assert "≈ $0.0" in body
    no_price = client.get(f"/jobs/estimate/?document={doc.pk}&count=6&model=other").content.decode()
    assert "no price set for other" in no_price


def test_the_estimate_waits_for_a_document_being_read(client, alice) -> None:
    doc = web.document(alice, status=Document.Status.EXTRACTING)
    body = logged_in(client, alice).get(f"/jobs/estimate/?document={doc.pk}&count=6").content.decode()
    assert "The estimate is ready once Manual has been read." in body


def test_sources_from_two_workspaces_are_refused(client, alice) -> None:
    doc = web.document(alice)
    team = workspace_create(name="Team", admin=alice)
    other = web.document(alice, title="Team doc")
    Document.objects.filter(pk=other.pk).update(workspace=team)
    response = logged_in(client, alice).get(f"/jobs/new/?document={doc.pk}&document={other.pk}", follow=True)
    assert "different workspaces" in response.content.decode()


@pytest.mark.parametrize("url", ["/jobs/new/?document={doc}", "/jobs/estimate/?document={doc}&count=3"])
def test_charlie_cannot_train_with_alices_document(client, alice, charlie, url) -> None:
    doc = web.document(alice)
    assert logged_in(client, charlie).get(url.format(doc=doc.pk)).status_code == 404


def test_charlie_cannot_attach_alices_agent(client, alice, charlie) -> None:
    doc = web.document(charlie)
    support = web.agent(alice)
    response = logged_in(client, charlie).post("/jobs/new/", train_data(doc, agents=[support.pk]))
    assert "Select a valid choice" in response.content.decode()
    assert not TrainingJob.objects.exists()


# --- job pages -------------------------------------------------------------------------------


def test_the_job_page_shows_progress_and_polls_while_running(client, alice) -> None:
    job = web.job(alice, count=10)
    web.completions(job, 4)
    TrainingJob.objects.filter(pk=job.pk).update(
        status="generating", created_count=4, calls=2, prompt_tokens=1200, completion_tokens=300
    )
    body = logged_in(client, alice).get(f"/jobs/{job.pk}/").content.decode()
    assert 'hx-trigger="every 1500ms"' in body
    assert "4 <small>of 10</small>" in body and "1,500" in body
    assert "Question 3: what does the Gold plan cost?" in body
    assert "Cancel job" in body


def test_the_progress_fragment_stops_polling_when_the_job_has_finished(client, alice) -> None:
    job = web.job(alice, count=3)
    TrainingJob.objects.filter(pk=job.pk).update(
        created_count=2, shortfall=1, shortfall_reasons={"evidence_not_found": 2}
    )
    body = logged_in(client, alice).get(f"/jobs/{job.pk}/progress/").content.decode()
    assert "hx-trigger" not in body
    assert "1 short:" in body and "the evidence quote was not found in the source (2×)" in body
    assert "Retry what failed" in body and "Cancel job" not in body


def test_a_failed_job_shows_its_error(client, alice) -> None:
    job = web.job(alice)
    TrainingJob.objects.filter(pk=job.pk).update(status="failed", error="Model unreachable for 10 minutes")
    body = logged_in(client, alice).get(f"/jobs/{job.pk}/").content.decode()
    assert "The job failed." in body and "Model unreachable for 10 minutes" in body


def test_cancel_stops_a_running_job(client, alice) -> None:
    job = web.job(alice)
    TrainingJob.objects.filter(pk=job.pk).update(status="generating")
    response = logged_in(client, alice).post(f"/jobs/{job.pk}/cancel/", follow=True)
    job.refresh_from_db()
    assert job.status == "cancelled"
    assert "Cancelled job" in response.content.decode()


def test_cancel_says_when_the_job_had_finished(client, alice) -> None:
    job = web.job(alice)
    response = logged_in(client, alice).post(f"/jobs/{job.pk}/cancel/", follow=True)
    assert "had already finished" in response.content.decode()


def test_retry_reruns_a_job_with_failed_work(client, alice, django_capture_on_commit_callbacks) -> None:
    job = web.job(alice, count=3)
    web.completions(job, 1)
    TrainingJob.objects.filter(pk=job.pk).update(status="failed", error="boom")
    WorkItem.objects.create(job=job, chunk=Completion.objects.first().chunk, quota=3, made=1, status="failed")
    with django_capture_on_commit_callbacks(execute=False):
        response = logged_in(client, alice).post(f"/jobs/{job.pk}/retry/", follow=True)
    job.refresh_from_db()
    assert job.status == "generating"
    assert "Retrying job" in response.content.decode()


def test_job_actions_need_post(client, alice) -> None:
    job = web.job(alice)
    assert logged_in(client, alice).get(f"/jobs/{job.pk}/cancel/").status_code == 405


@pytest.mark.parametrize("url", ["/jobs/{pk}/", "/jobs/{pk}/progress/"])
def test_it_hides_alices_jobs_from_charlie(client, alice, charlie, url) -> None:
    job = web.job(alice)
    assert logged_in(client, charlie).get(url.format(pk=job.pk)).status_code == 404


@pytest.mark.parametrize("action", ["cancel", "retry"])
def test_charlie_cannot_cancel_or_retry_alices_job(client, alice, charlie, action) -> None:
    job = web.job(alice)
    TrainingJob.objects.filter(pk=job.pk).update(status="generating")
    assert logged_in(client, charlie).post(f"/jobs/{job.pk}/{action}/").status_code == 404
    job.refresh_from_db()
    assert job.status == "generating"


def test_charlies_job_list_is_empty(client, alice, charlie) -> None:
    web.job(alice)
    body = logged_in(client, charlie).get("/jobs/").content.decode()
    assert "No jobs yet" in body


@pytest.mark.parametrize("rows", [10, 200])
def test_the_job_list_runs_the_same_queries_for_10_and_200(client, alice, rows, django_assert_num_queries) -> None:
    web.jobs(alice, rows)
    logged_in(client, alice)
    # session, user, count, one page of jobs (owner, workspace joined), documents, conversations, agents
    with django_assert_num_queries(7):
        response = client.get("/jobs/")
    assert response.content.decode().count('<tr id="job-') == min(rows, 25)


# --- the whole pipeline behind the dialog --------------------------------------------------------


@pytest.mark.django_db(transaction=True)
@pytest.mark.usefixtures("eager_celery")
def test_generate_runs_the_job_to_completion_with_the_fake_model(client, alice, fake_llm, settings, tmp_path) -> None:
    settings.MEDIA_ROOT = tmp_path
    doc = web.document(alice, pages=3)
    support = web.agent(alice)
    response = logged_in(client, alice).post("/jobs/new/", train_data(doc, agents=[support.pk]), follow=True)
    job = TrainingJob.objects.get()
    assert job.status == "completed" and job.created_count == 6
    body = response.content.decode()
    assert "Completed: all 6 completions are waiting for review." in body
    assert reverse("training:review") + f"?job={job.pk}" in body
