"""The app as production runs it, in real headless Chromium.

gunicorn (the command of docker-compose.yml's web service) with DJANGO_DEBUG=0, a secret key and
the static files collected into a temporary STATIC_ROOT, so WhiteNoise serves them; a real Celery
worker on real Redis against the fake model server. Plain http on 127.0.0.1, as when the
production setup is tried without its TLS proxy (DJANGO_SECURE_SSL_REDIRECT=0,
DJANGO_SECURE_COOKIES=0). Every request the browser makes is recorded: none may leave
127.0.0.1 (no CDN) and none may fail.
"""
from __future__ import annotations

import re
import secrets
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
from django.contrib.auth import get_user_model
from django.db import connection

from masscer.tests.browser.test_flows import PASSWORD, browser  # noqa: F401 - fixture
from testing.processes import (
    ROOT,
    broker_env,
    child_env,
    database_url,
    free_port,
    manage,
    start_ready_worker,
    stop_process,
    wait_for,
)
from training.models import Completion

pytestmark = [pytest.mark.browser, pytest.mark.integration, pytest.mark.django_db(transaction=True)]

HANDBOOK = """# Returns

Bikes can be returned within 30 days of delivery when they have not been ridden outdoors.
The refund goes back to the card that paid for the order within five working days.

# Repairs

Every frame has a ten year warranty against cracks. Wheels, brakes and chains wear out and
are repaired at cost. A repair is booked on the service page and takes about a week.
"""


@dataclass
class Production:
    url: str
    env: dict[str, str]
    logs: Path
    processes: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def log_tail(self) -> str:
        return "\n".join(f"--- {p.name}\n{p.read_text()[-3000:]}" for p in sorted(self.logs.glob("*.log")))


def production_env(tmp: Path, fake_llm: Any) -> dict[str, str]:
    return child_env(
        DJANGO_DEBUG="0",
        DJANGO_SECRET_KEY=secrets.token_urlsafe(50),
        DJANGO_SECURE_SSL_REDIRECT="0",
        DJANGO_SECURE_COOKIES="0",
        MASSCER_STATIC_ROOT=str(tmp / "static"),
        MASSCER_VAR_DIR=str(tmp / "var"),
        MASSCER_MEDIA_ROOT=str(tmp / "uploads"),
        DATABASE_URL=database_url(connection.settings_dict),
        **broker_env(),
        CELERY_TASK_ALWAYS_EAGER="false",
        MASSCER_LLM_BASE_URL=fake_llm.base_url,
        MASSCER_LLM_API_KEY="sk-test-secret-key",
        MASSCER_LLM_MODEL="fake-model",
        MASSCER_LLM_MODE="chat",
    )


def start_gunicorn(env: dict[str, str], port: int, log: Path) -> subprocess.Popen[bytes]:
    """The web service's command in docker-compose.yml, on loopback."""
    command = [
        sys.executable, "-m", "gunicorn", "masscer.wsgi", "--bind", f"127.0.0.1:{port}",
        "--worker-class", "gthread", "--workers", "2", "--threads", "4",
    ]  # fmt: skip
    with log.open("ab") as output:  # the child keeps its own copy of the descriptor
        return subprocess.Popen(
            command, cwd=ROOT, env=env, stdout=output, stderr=subprocess.STDOUT, start_new_session=True
        )


def answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return response.status == 200
    except OSError:
        return False


@pytest.fixture
def production(transactional_db: Any, fake_llm: Any, tmp_path: Path) -> Iterator[Production]:
    env = production_env(tmp_path, fake_llm)
    (tmp_path / "var").mkdir()
    collected = manage("collectstatic", "--noinput", env=env, timeout=180)
    assert collected.returncode == 0, collected.stderr
    port = free_port()
    stack = Production(url=f"http://127.0.0.1:{port}", env=env, logs=tmp_path)
    try:
        stack.processes.append(start_gunicorn(env, port, tmp_path / "gunicorn.log"))
        worker = start_ready_worker(env, log_path=tmp_path / "worker.log", queues="ingest,llm", concurrency=2)
        stack.processes.append(worker)
        assert wait_for(lambda: answers(stack.url + "/accounts/login/"), timeout=60), stack.log_tail()
        yield stack
    finally:
        for process in stack.processes:
            stop_process(process)


@dataclass
class Traffic:
    """Every request the browser made, with its answer (or its failure)."""

    requests: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    def watch(self, context: Any) -> None:
        context.on("request", lambda request: self.requests.append(request.url))
        context.on("requestfailed", lambda request: self.problems.append(f"failed: {request.url} {request.failure}"))
        context.on("response", self._response)

    def _response(self, response: Any) -> None:
        if response.status >= 400:
            self.problems.append(f"{response.status}: {response.url}")

    def outside(self) -> list[str]:
        return [url for url in self.requests if urlsplit(url).scheme not in ("data", "blob")
                and urlsplit(url).hostname != "127.0.0.1"]  # fmt: skip


@pytest.fixture
def tab(browser: Any, production: Production) -> Iterator[tuple[Any, Traffic]]:  # noqa: F811
    context = browser.new_context(viewport={"width": 1360, "height": 900})
    context.set_default_timeout(30_000)
    traffic = Traffic()
    traffic.watch(context)
    page = context.new_page()
    page.on("pageerror", lambda error: traffic.problems.append(f"script error: {error}"))
    page.on("console", lambda message: traffic.problems.append(message.text) if message.type == "error" else None)
    yield page, traffic
    context.close()


def style(page: Any, selector: str, prop: str) -> str:
    return page.eval_on_selector(selector, "(el, prop) => getComputedStyle(el).getPropertyValue(prop)", prop)


def log_in(page: Any, url: str) -> None:
    page.goto(url + "/documents/")
    page.wait_for_url(re.compile(r"/accounts/login/"))
    page.fill("#id_username", "alice")
    page.fill("#id_password", PASSWORD)
    page.click("button[type=submit]")
    page.wait_for_url(re.compile(r"/documents/$"))
    # app.css, from a hashed file WhiteNoise serves.
    assert style(page, ".sidebar", "width") == "220px"
    assert style(page, ".sidebar", "background-color") == "rgb(17, 24, 39)"


def type_count(page: Any, count: str) -> str:
    """Type a number of completions as a user does; the estimate follows: its tokens line."""
    field = page.locator("#id_count")
    field.fill("")
    with page.expect_response(re.compile(rf"/jobs/estimate/\?.*&count={count}&")) as answer:
        field.press_sequentially(count)
    assert answer.value.status == 200
    page.wait_for_function("n => document.querySelector('#id_count').value === n", arg=count)
    tokens = page.locator("#estimate [data-estimate=tokens]")
    tokens.wait_for()
    page.wait_for_load_state("networkidle")
    return tokens.inner_text()


def train_with_a_live_estimate(page: Any, tmp_path: Path) -> None:
    source = tmp_path / "handbook.md"
    source.write_text(HANDBOOK)
    page.set_input_files("#id_files", str(source))
    page.click("#upload-form button[type=submit]")
    row = page.locator("tr[data-status=ready]", has_text="handbook")
    row.wait_for(timeout=60_000)  # extracted by the ingest worker; the row follows it live
    row.locator("summary", has_text="Options").click()
    row.get_by_role("link", name="Train with this document").click()
    dialog = page.locator("dialog#dialog[open]")
    dialog.wait_for()
    small = type_count(page, "2")
    assert type_count(page, "40") != small
    type_count(page, "4")
    page.fill("#id_new_agent", "Support")
    dialog.get_by_role("button", name="Generate").click()
    page.wait_for_url(re.compile(r"/jobs/\d+/$"))
    # Live progress: htmx polls the job until the worker has made the completions.
    progress = page.locator("#job-progress[data-status=completed]")
    progress.wait_for(timeout=90_000)
    assert "4 of 4" in progress.locator("[data-made]").inner_text().replace("\n", " ")


def approve_one_by_keyboard(page: Any) -> None:
    page.locator(".sidebar").get_by_role("link", name="Review").click()
    page.wait_for_function("document.querySelectorAll('[data-card][data-status=pending]').length === 4")
    page.keyboard.press("a")
    page.wait_for_function("document.querySelectorAll('[data-card][data-status=approved]').length === 1")
    approved = Completion.objects.get(status=Completion.Status.APPROVED)
    assert approved.reviewed_by.username == "alice"


def admin_is_styled(page: Any, url: str) -> None:
    page.goto(url + "/admin/training/completion/")
    page.locator("#result_list").wait_for()
    assert style(page, "#header", "display") == "flex"
    assert style(page, "#header", "background-color") not in ("", "rgba(0, 0, 0, 0)")


def api_docs_render(page: Any, url: str) -> None:
    page.goto(url + "/api/docs")
    page.locator(".swagger-ui .info .title", has_text="Masscer datasets API").wait_for()
    page.locator(".swagger-ui .opblock").first.wait_for()
    assert page.locator(".swagger-ui .opblock").count() > 20


def test_production_serves_its_pages_scripts_and_styles_offline(
    tab: tuple[Any, Traffic], production: Production, alice: Any, tmp_path: Path
) -> None:
    get_user_model().objects.filter(pk=alice.pk).update(is_staff=True, is_superuser=True)
    page, traffic = tab
    try:
        log_in(page, production.url)
        train_with_a_live_estimate(page, tmp_path)
        approve_one_by_keyboard(page)
        admin_is_styled(page, production.url)
        api_docs_render(page, production.url)
    except Exception:
        print(production.log_tail())
        raise
    assert any("/static/django_htmx/htmx-2.min." in url for url in traffic.requests)
    assert any("/static/admin/css/base." in url for url in traffic.requests)
    assert any("/static/ninja/swagger-ui-bundle." in url for url in traffic.requests)
    assert not traffic.outside(), traffic.outside()
    assert not traffic.problems, traffic.problems


def test_static_files_are_hashed_compressed_and_cached_for_good(production: Production) -> None:
    with urllib.request.urlopen(production.url + "/accounts/login/", timeout=10) as response:
        page = response.read().decode()
    stylesheet = re.search(r'href="(/static/masscer/app\.[0-9a-f]{12}\.css)"', page)
    assert stylesheet, "the login page names the collected, hashed stylesheet"
    request = urllib.request.Request(production.url + stylesheet.group(1), headers={"Accept-Encoding": "gzip"})
    with urllib.request.urlopen(request, timeout=10) as response:
        assert response.headers["Content-Encoding"] == "gzip"
        assert "immutable" in response.headers["Cache-Control"]
