"""Model output and file names are data: markup in them never runs, in the app or the admin."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from documents.models import Document, Page
from masscer.tests.web import eager_celery, fast_passwords  # noqa: F401 - fixtures
from training.models import Assignment, Chunk, Completion, TrainingJob, WorkItem
from workspaces.services import workspace_personal

from .test_flows import app, browser, log_in, shot  # noqa: F401 - fixtures

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]

SCRIPT = "<script>window.__xss = 'script'</script>"
IMAGE = "<img src=x onerror=\"window.__xss = 'img'\">"


@pytest.fixture
def hostile(alice: Any, settings: Any, tmp_path: Path) -> dict[str, int]:
    """A document named like markup, and a completion made of markup (as a model might write)."""
    from agents.models import Agent

    alice.is_staff = alice.is_superuser = True
    alice.save()
    workspace = workspace_personal(user=alice)
    text = f"Intro. {SCRIPT} and {IMAGE} end."
    document = Document.objects.create(
        owner=alice, workspace=workspace, title=f"Report {IMAGE}", filename=f"{SCRIPT}.txt",
        file="documents/x.txt", sha256="0" * 64, status=Document.Status.READY, page_count=1,
    )  # fmt: skip
    Page.objects.create(document=document, number=1, text=text)
    chunk = Chunk.objects.create(
        document=document, index=0, text=text, token_count=30, locator={"pages": [1, 1]}, content_hash="x"
    )
    agent = Agent.objects.create(owner=alice, workspace=workspace, name=f"Agent {SCRIPT}", slug="a", system_prompt="x")
    job = TrainingJob.objects.create(
        owner=alice, workspace=workspace, requested_count=1, model="m", status=TrainingJob.Status.COMPLETED,
        created_count=1,
    )  # fmt: skip
    completion = Completion.objects.create(
        job=job, chunk=chunk, ordinal=0, question=f"Q {SCRIPT}?", answer=f"A {IMAGE}", evidence=IMAGE
    )
    Assignment.objects.create(completion=completion, agent=agent)
    # A rejected reply kept for the job page (shown there as text).
    WorkItem.objects.create(
        job=job, chunk=chunk, quota=1, made=1, status=WorkItem.Status.DONE,
        samples=[{"reason": "invalid_output", "text": f"Sure! {SCRIPT} {IMAGE}"}],
    )  # fmt: skip
    return {"document": document.pk, "job": job.pk, "agent": agent.pk, "completion": completion.pk}


def test_markup_from_models_and_file_names_never_runs(
    browser: Any, app: str, hostile: dict[str, int]  # noqa: F811
) -> None:
    context = browser.new_context(viewport={"width": 1360, "height": 900})
    page = context.new_page()
    dialogs: list[str] = []
    errors: list[str] = []
    page.on("dialog", lambda dialog: (dialogs.append(dialog.message), dialog.dismiss()))
    page.on("pageerror", lambda error: errors.append(str(error)))
    log_in(page, app)
    paths = [
        "/documents/",
        f"/documents/{hostile['document']}/",
        f"/jobs/{hostile['job']}/",
        "/jobs/review/?status=pending",
        f"/jobs/completions/{hostile['completion']}/",
        f"/agents/{hostile['agent']}/",
        "/agents/",
        "/admin/training/completion/",
        f"/admin/training/completion/{hostile['completion']}/change/",
        "/admin/documents/document/",
    ]
    for path in paths:
        page.goto(app + path)
        page.wait_for_load_state("load")
        assert page.evaluate("window.__xss") is None, path
        # The markup is shown as text, so a reviewer can see what the model wrote.
        if path.startswith("/jobs/review"):
            assert "<script>" in page.inner_text("body")
            shot(page, "31-review-escaped")
    context.close()
    assert dialogs == [] and errors == []
