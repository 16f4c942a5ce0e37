"""The web UI in real headless Chromium (Debian's /usr/bin/chromium, driven by Playwright).

The live server runs the whole pipeline inline: Celery tasks run eagerly after commit in the
server thread, against the fake model server. Screenshots go to artifacts/screenshots/.
"""
from __future__ import annotations

import json
import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from django.conf import settings

from masscer.tests.web import eager_celery, fast_passwords  # noqa: F401 - fixtures

CHROMIUM = "/usr/bin/chromium"
ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-quic",
]
SAMPLES = Path(settings.BASE_DIR).parent / "shared" / "samples"
SCREENSHOTS = Path(settings.BASE_DIR) / "artifacts" / "screenshots"
PASSWORD = "alice-Secret-123"

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]


def _unavailable() -> str | None:
    if not os.path.exists(CHROMIUM):
        return f"{CHROMIUM} is missing (run scripts/ensure_browser.sh)"
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "the playwright Python package is not installed"
    return None


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    reason = _unavailable()
    if reason:
        if os.environ.get("CI"):
            pytest.fail(f"Browser tests cannot run: {reason}")
        pytest.skip(f"Browser tests skipped: {reason}")
    from playwright.sync_api import sync_playwright

    # Playwright's sync API keeps an event loop in this thread; the test's ORM calls are still sync.
    os.environ["DJANGO_ALLOW_ASYNC_UNSAFE"] = "true"
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=ARGS)
        yield chromium
        chromium.close()
    os.environ.pop("DJANGO_ALLOW_ASYNC_UNSAFE", None)


@pytest.fixture
def app(live_server: Any, settings: Any, tmp_path: Path, fake_llm: Any, eager_celery: Any, alice: Any) -> str:  # noqa: F811
    settings.MEDIA_ROOT = tmp_path / "media"
    return live_server.url


@pytest.fixture
def page(browser: Any, app: str) -> Iterator[Any]:
    context = browser.new_context(viewport={"width": 1360, "height": 900}, accept_downloads=True)
    context.set_default_timeout(30_000)
    tab = context.new_page()
    problems: list[str] = []
    tab.on("pageerror", lambda error: problems.append(f"script error: {error}"))
    tab.on("console", lambda message: problems.append(message.text) if message.type == "error" else None)
    yield tab
    context.close()
    assert not problems, problems


def shot(page: Any, name: str) -> None:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.evaluate("window.scrollTo(0, 0)")  # sticky parts sit where they belong in a full-page shot
    page.screenshot(path=str(SCREENSHOTS / f"{name}.png"), full_page=True)


def log_in(page: Any, app: str, path: str = "/documents/", screenshot: str = "") -> None:
    page.goto(app + path)
    page.wait_for_url(re.compile(r"/accounts/login/"))
    if screenshot:
        shot(page, screenshot)
    page.fill("#id_username", "alice")
    page.fill("#id_password", PASSWORD)
    page.click("button[type=submit]")
    page.wait_for_url(re.compile(re.escape(path) + "$"))


def upload(page: Any, path: Path) -> None:
    page.set_input_files("#id_files", str(path))
    page.click("#upload-form button[type=submit]")


def cards(page: Any, status: str) -> int:
    return page.locator(f"[data-card][data-status={status}]").count()


def wait_cards(page: Any, status: str, count: int) -> None:
    page.wait_for_function(
        "([s, n]) => document.querySelectorAll(`[data-card][data-status=${s}]`).length === n", arg=[status, count]
    )


def test_train_a_pdf_review_and_download_the_dataset(page: Any, app: str) -> None:
    log_in(page, app, screenshot="00-login")
    shot(page, "01-documents-empty")

    upload(page, SAMPLES / "pdf" / "pdflatex-4-pages.pdf")
    row = page.locator("tr[data-status=ready]")
    row.wait_for()
    assert "4" in row.locator("td.num").first.inner_text()
    shot(page, "02-documents-uploaded")

    row.locator("summary", has_text="Options").click()
    row.get_by_role("link", name="Train with this document").click()
    dialog = page.locator("dialog#dialog[open]")
    dialog.wait_for()
    assert "Allowed: 1 to 5,000" in dialog.inner_text()
    page.fill("#id_count", "6")
    page.fill("#id_new_agent", "Support")
    page.wait_for_function("document.querySelector('[data-estimate=calls]') !== null")
    page.locator("#id_count").dispatch_event("change")
    page.wait_for_timeout(300)
    shot(page, "03-train-dialog")
    dialog.get_by_role("button", name="Generate").click()

    page.wait_for_url(re.compile(r"/jobs/\d+/$"))
    progress = page.locator("#job-progress[data-status=completed]")
    progress.wait_for()
    assert "6 of 6" in progress.locator("[data-made]").inner_text().replace("\n", " ")
    assert page.locator(".recent li").count() == 6
    shot(page, "04-job-completed")

    page.get_by_role("link", name="Review them").click()
    page.wait_for_url(re.compile(r"/jobs/review/\?job=\d+"))
    wait_cards(page, "pending", 6)
    assert page.locator("mark.evidence").count() == 6
    shot(page, "05-review-queue")

    # Keyboard: a approves the current card and moves on to the next pending one.
    for approved in range(1, 5):
        page.keyboard.press("a")
        wait_cards(page, "approved", approved)
    page.keyboard.press("r")
    wait_cards(page, "rejected", 1)
    page.keyboard.press("e")
    editor = page.locator("details.edit[open]")
    editor.wait_for()
    editor.locator("textarea[name=question]").fill("What is shown on the four pages of this sample document?")
    editor.get_by_role("button", name="Save and approve").click()
    wait_cards(page, "approved", 5)
    assert page.locator("[data-card] .chip", has_text="edited").count() == 1
    assert "Approved by alice" in page.locator("[data-card][data-status=approved]").first.inner_text()
    shot(page, "06-review-done")

    page.locator(".sidebar").get_by_role("link", name="Agents").click()
    agent_row = page.locator("tr[id^=agent-]", has_text="Support")
    assert agent_row.locator("[data-count=approved]").inner_text().strip() == "5"
    assert agent_row.locator("[data-count=rejected]").inner_text().strip() == "1"
    assert agent_row.locator("[data-count=pending]").inner_text().strip() == "0"
    shot(page, "07-agents-dashboard")

    agent_row.get_by_role("link", name="Support").click()
    page.locator("summary", has_text="Download dataset").click()
    with page.expect_download() as download_info:
        page.locator("a[data-export=openai-jsonl-approved]").click()
    download = download_info.value
    lines = Path(download.path()).read_text().splitlines()
    assert len(lines) == 5
    assert download.suggested_filename == "support-openai-jsonl-approved.jsonl"
    shot(page, "08-agent-page")


def test_import_sharegpt_and_mine_it(page: Any, app: str) -> None:
    log_in(page, app, "/conversations/import/")
    page.set_input_files("#id_files", str(SAMPLES / "conversations" / "sharegpt.json"))
    page.click("#import-form button[type=submit]")
    report = page.locator("[data-import-report]")
    report.wait_for()
    assert "2 conversations imported" in report.inner_text()
    shot(page, "11-import-report")

    page.get_by_role("link", name="Train with the imported conversations").click()
    dialog = page.locator("dialog#dialog[open]")
    dialog.wait_for()
    page.fill("#id_count", "3")
    dialog.get_by_label("Mine the questions users asked").check()
    page.fill("#id_new_agent", "Support")
    page.wait_for_timeout(300)
    shot(page, "12-train-conversations-dialog")
    dialog.get_by_role("button", name="Generate").click()

    page.wait_for_url(re.compile(r"/jobs/\d+/$"))
    page.locator("#job-progress[data-status=completed]").wait_for()
    assert page.locator(".recent li").count() >= 1
    assert "Mine the questions users asked" in page.locator(".page-head").inner_text()
    shot(page, "13-mining-job")


def test_choose_question_types_in_the_dialog_and_review_one_kind(page: Any, app: str) -> None:
    log_in(page, app)
    upload(page, SAMPLES / "pdf" / "pdflatex-4-pages.pdf")
    row = page.locator("tr[data-status=ready]")
    row.wait_for()
    row.locator("summary", has_text="Options").click()
    row.get_by_role("link", name="Train with this document").click()
    dialog = page.locator("dialog#dialog[open]")
    dialog.wait_for()
    page.fill("#id_count", "6")
    page.fill("#id_new_agent", "Support")
    page.fill("#id_type_procedural", "1")  # factual keeps its 1: half and half
    page.fill("#id_audience", "lab technicians")
    page.select_option("#id_difficulty", "hard")
    shot(page, "14-train-dialog-question-types")
    dialog.get_by_role("button", name="Generate").click()

    page.wait_for_url(re.compile(r"/jobs/\d+/$"))
    page.locator("#job-progress[data-status=completed]").wait_for()
    mix = page.locator("[data-type-mix]").inner_text()
    assert "Factual: 3 of 3" in mix and "Procedural (how to): 3 of 3" in mix
    page.goto(f"{app}/jobs/review/?question_type=procedural")
    wait_cards(page, "pending", 3)
    assert page.locator("[data-card] [data-question-type=procedural]").count() == 3
    shot(page, "15-review-one-kind")

    # The agent's dataset, one kind of question only.
    page.locator(".sidebar").get_by_role("link", name="Agents").click()
    page.locator("tr[id^=agent-]", has_text="Support").get_by_role("link", name="Support").click()
    page.locator("summary", has_text="Download dataset").click()
    form = page.locator("form[data-export-form]")
    form.get_by_label("Format").select_option("records")
    form.get_by_label("Status").select_option("all")
    form.get_by_label("Kind of question").select_option("procedural")
    shot(page, "16-download-one-kind")
    with page.expect_download() as download_info:
        form.get_by_role("button", name="Download").click()
    download = download_info.value
    records = [json.loads(line) for line in Path(download.path()).read_text().splitlines()]
    assert len(records) == 3 and {r["question_type"] for r in records} == {"procedural"}
    assert download.suggested_filename == "support-records-all-procedural.jsonl"


def test_a_failed_upload_shows_its_error(page: Any, app: str) -> None:
    log_in(page, app)
    upload(page, SAMPLES / "pdf" / "imagemagick-images.pdf")
    row = page.locator("tr[data-status=failed]")
    row.wait_for()
    assert "No extractable text" in row.inner_text()
    shot(page, "21-failed-upload")
    row.get_by_role("link", name="imagemagick-images").click()
    assert "This document could not be read." in page.locator("main").inner_text()
    shot(page, "22-failed-document")

    # Dropping files on the zone uploads them at once (here two, one of them empty).
    page.locator(".sidebar").get_by_role("link", name="Documents").click()
    page.evaluate(
        """() => {
            const data = new DataTransfer();
            data.items.add(new File(["# Returns\\n\\nBikes can be returned within 30 days."], "returns.md"));
            data.items.add(new File([], "empty.txt"));
            const drop = new DragEvent("drop", {dataTransfer: data, bubbles: true});
            document.querySelector(".dropzone").dispatchEvent(drop);
        }"""
    )
    page.locator(".upload-results").wait_for()
    assert "returns.md uploaded" in page.locator(".upload-results").inner_text()
    assert "empty.txt was not uploaded: 'empty.txt' is empty." in page.locator(".upload-results").inner_text()
    assert page.locator("tr[data-status=ready]", has_text="returns").count() == 1
    shot(page, "23-dropped-files")


def test_the_job_page_follows_a_running_job(page: Any, app: str, alice: Any) -> None:
    from masscer.tests import web
    from training.models import TrainingJob

    job = web.job(alice, count=4)
    TrainingJob.objects.filter(pk=job.pk).update(status="generating", chunks_total=1)
    log_in(page, app, f"/jobs/{job.pk}/")
    page.locator("#job-progress[data-status=generating]").wait_for()
    assert "Cancel job" in page.locator("#job-progress").inner_text()
    web.completions(job, 4)
    TrainingJob.objects.filter(pk=job.pk).update(status="completed", created_count=4, chunks_done=1)
    # The page polls every 1.5 s while the job runs; it shows the result without a reload.
    page.locator("#job-progress[data-status=completed]").wait_for(timeout=10_000)
    assert page.locator(".recent li").count() == 4
    assert "Cancel job" not in page.locator("#job-progress").inner_text()
