"""Team and agent flows in real headless Chromium, as users walk them: invitations, context rules
with "why this answer", and reviewing a conversation for the multi-turn export.

Every tab records script errors, console errors, failed requests and answers of 400 and up;
each test ends by asserting there were none.
"""
from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

try:
    from playwright.sync_api import expect
except ImportError:  # the browser fixture skips these tests (or fails them on CI) and says why
    expect = None

from masscer.tests.web import eager_celery, fast_passwords  # noqa: F401 - fixtures
from training.models import Assignment, Completion
from training.tests.factories import make_agent, make_chunk, make_completions, make_document, make_job
from workspaces.models import Invitation, Membership, Workspace

from .test_flows import PASSWORD, app, browser, shot  # noqa: F401 - fixtures

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]

BOB_PASSWORD = "bob-Secret-123"


@dataclass
class Watched:
    """What went wrong in a browser context: script and console errors, failed requests, 4xx/5xx."""

    problems: list[str] = field(default_factory=list)

    def watch(self, context: Any) -> None:
        context.on("requestfailed", lambda request: self.problems.append(f"failed: {request.url} {request.failure}"))
        context.on("response", self._response)

    def watch_page(self, page: Any) -> None:
        page.on("pageerror", lambda error: self.problems.append(f"script error: {error}"))
        page.on("console", lambda message: self.problems.append(message.text) if message.type == "error" else None)

    def _response(self, response: Any) -> None:
        if response.status >= 400:
            self.problems.append(f"{response.status}: {response.url}")


@pytest.fixture
def watched() -> Watched:
    return Watched()


@pytest.fixture
def tab(browser: Any, app: str, watched: Watched) -> Iterator[Callable[[], Any]]:  # noqa: F811
    """Opens a new tab in a browser context of its own (one per user), watched for problems."""
    contexts: list[Any] = []

    def open_tab() -> Any:
        context = browser.new_context(viewport={"width": 1360, "height": 900}, accept_downloads=True)
        context.set_default_timeout(30_000)
        contexts.append(context)
        watched.watch(context)
        page = context.new_page()
        watched.watch_page(page)
        return page

    yield open_tab
    for context in contexts:
        context.close()


def log_in(page: Any, app: str, username: str, password: str, path: str) -> None:  # noqa: F811
    page.goto(app + path)
    expect(page).to_have_url(re.compile(r"/accounts/login/"))
    page.get_by_label("Login name").fill(username)
    page.get_by_label("Password").fill(password)
    page.get_by_role("button", name="Log in").click()
    expect(page).to_have_url(re.compile(re.escape(path) + "$"))


def flash(page: Any) -> Any:
    return page.locator(".messages [role=status]")


# --------------------------------------------------------------------------- invitations


def invite(page: Any, username: str, role: str) -> str:
    """Fill the workspace page's invitation form; the message it answers with."""
    form = page.locator("form", has=page.get_by_role("heading", name="Invite someone or change a role"))
    form.get_by_label("Username").fill(username)
    form.get_by_label("Role").select_option(label=role)
    form.get_by_role("button", name="Invite or change role").click()
    expect(flash(page)).to_contain_text(f"“{username}”")
    return flash(page).inner_text()


def test_alice_invites_bob_as_reviewer_and_he_accepts(
    tab: Callable[[], Any], app: str, alice: Any, bob: Any, watched: Watched  # noqa: F811
) -> None:
    alices = tab()
    log_in(alices, app, "alice", PASSWORD, "/workspaces/")
    alices.get_by_label("Name").fill("Support team")
    alices.get_by_role("button", name="Create workspace").click()
    expect(alices).to_have_url(re.compile(r"/workspaces/\d+/$"))
    expect(alices.get_by_role("heading", name="Support team")).to_be_visible()
    team = Workspace.objects.get(name="Support team")

    said_for_bob = invite(alices, "bob", "Reviewer")
    pending = alices.locator("table", has=alices.get_by_role("columnheader", name="Invited, not yet joined"))
    expect(pending.get_by_role("row", name="bob")).to_contain_text("Reviewer")
    assert not Membership.objects.filter(workspace=team, user=bob).exists()  # not without his consent
    shot(alices, "31-invitation-pending")
    # An unknown login name gets the same words: the form tells nobody which names exist.
    said_for_nobody = invite(alices, "nobody-here", "Reviewer")
    assert said_for_nobody.replace("nobody-here", "bob") == said_for_bob

    bobs = tab()
    log_in(bobs, app, "bob", BOB_PASSWORD, "/workspaces/")
    invitation = bobs.locator("#invitations").get_by_role("row", name=re.compile("Support team"))
    expect(invitation).to_contain_text("as reviewer, invited by alice")
    shot(bobs, "32-invitation-to-accept")
    invitation.get_by_role("button", name="Accept").click()
    expect(bobs).to_have_url(f"{app}/workspaces/{team.pk}/")
    expect(flash(bobs)).to_have_text("You joined “Support team” as reviewer.")
    expect(bobs.get_by_text("Your role: Reviewer")).to_be_visible()
    assert Membership.objects.get(workspace=team, user=bob).role == Membership.Role.REVIEWER
    assert not Invitation.objects.filter(workspace=team, username="bob").exists()

    alices.reload()
    members = alices.locator("table", has=alices.get_by_role("columnheader", name="Member", exact=True))
    expect(members.get_by_role("row", name=re.compile(r"^bob"))).to_contain_text("Reviewer")
    pending = alices.locator("table", has=alices.get_by_role("columnheader", name="Invited, not yet joined"))
    expect(pending.get_by_role("row", name=re.compile(r"^bob"))).to_have_count(0)  # joined
    expect(pending.get_by_role("row", name=re.compile(r"^nobody-here"))).to_have_count(1)  # listed like any other
    assert not watched.problems, watched.problems


# --------------------------------------------------------------------------- context rules


@pytest.fixture
def material(alice: Any) -> dict[str, Any]:
    """alice's agent with three approved completions, all retrieved when relevant."""
    agent = make_agent(alice, slug="support")
    chunk = make_chunk(make_document(alice, title="Handbook"))
    policy, returns, brakes = make_completions(
        make_job(alice, count=3),
        chunk,
        [
            ("Who pays for the shipping of a warranty repair?", "The shop pays both ways within Germany."),
            ("Can I return a bike I bought online?", "Yes, unridden bikes come back within 30 days for a refund."),
            ("How often should disc brake pads be changed?", "Every 1,500 km or when thinner than 1.5 mm."),
        ],
        agents=[agent],
        status=Completion.Status.APPROVED,
    )
    return {"agent": agent, "policy": policy, "returns": returns, "brakes": brakes}


def test_an_include_always_rule_leads_why_this_answer(
    tab: Callable[[], Any], app: str, material: dict[str, Any], watched: Watched  # noqa: F811
) -> None:
    agent, policy, returns = material["agent"], material["policy"], material["returns"]
    page = tab()
    log_in(page, app, "alice", PASSWORD, f"/agents/{agent.pk}/")
    page.get_by_label(f"Select completion {policy.pk}", exact=True).check()
    page.get_by_label("Action").select_option(label="Set the context rule…")
    page.get_by_label("Context rule").select_option(label="Include always")
    page.locator("#material-form").get_by_role("button", name="Apply").click()
    expect(flash(page)).to_have_text("1 completion of Support: include always.")
    expect(page.locator(f"[data-rule='{policy.pk}']")).to_have_text("Include always")
    expect(page.locator(f"[data-rule='{returns.pk}']")).to_have_text("When relevant (retrieved)")
    assert Assignment.objects.get(agent=agent, completion=policy).rule == Assignment.Rule.ALWAYS

    why = page.locator("#why")
    why.get_by_label("Question", exact=True).fill("Can I return my bike for a refund?")
    why.get_by_role("button", name="Show the material").click()
    expect(page).to_have_url(re.compile(rf"/agents/{agent.pk}/why/\?q=Can\+I\+return"))
    rows = page.locator("#picked tbody tr")
    expect(rows).to_have_count(2)  # the brakes answer matches nothing in the question
    expect(rows.nth(0)).to_have_attribute("data-picked", str(policy.pk))
    expect(rows.nth(0).locator("[data-rule]")).to_have_text("always")
    expect(rows.nth(0).locator("[data-score]")).to_have_text("—")
    expect(rows.nth(1)).to_have_attribute("data-picked", str(returns.pk))
    expect(rows.nth(1).locator("[data-rule]")).to_have_text("retrieve")
    assert float(rows.nth(1).locator("[data-score]").inner_text()) > 0
    shot(page, "33-why-this-answer")
    assert not watched.problems, watched.problems


# --------------------------------------------------------------------------- multi-turn review

CALL = {
    "id": "call_weather_1",
    "type": "function",
    "function": {"name": "get_weather", "arguments": json.dumps({"city": "Lyon"})},
}
WEATHER = {
    "title": "Weather in Lyon",
    "messages": [
        {"role": "system", "content": "You answer with the weather tool."},
        {"role": "user", "content": "What's the weather in Lyon?"},
        {"role": "assistant", "content": "", "tool_calls": [CALL]},
        {"role": "tool", "tool_call_id": "call_weather_1", "content": '{"temp": 21, "sky": "clear"}'},
        {"role": "assistant", "content": "21 C, clear."},
        {"role": "user", "content": "Thanks! Umbrella?"},
        {"role": "assistant", "content": "No need today."},
    ],
}
UNREVIEWED = {
    "title": "Tubeless setup",
    "messages": [
        {"role": "user", "content": "Can I run my wheels tubeless?"},
        {"role": "assistant", "content": "Yes, the rims are tubeless-ready."},
    ],
}
EDITED = "It is 21 °C with a clear sky in Lyon."


def review_turn(page: Any, position: int, *, text: str | None = None, weight: str | None = None) -> None:
    turn = page.locator(f"#message-{position}")
    turn.get_by_text("Review this turn").click()
    if text is not None:
        turn.get_by_label("Text", exact=True).fill(text)
    if weight is not None:
        turn.get_by_label(f"Weight of message {position}").select_option(label=weight)
    turn.get_by_role("button", name="Save turn").click()
    expect(flash(page)).to_have_text(f"Saved message #{position}.")


def test_a_reviewed_conversation_with_a_tool_call_downloads_as_multiturn_jsonl(
    tab: Callable[[], Any], app: str, tmp_path: Path, watched: Watched  # noqa: F811
) -> None:
    source = tmp_path / "chats.jsonl"
    source.write_text("\n".join(json.dumps(record) for record in (WEATHER, UNREVIEWED)) + "\n")
    page = tab()
    log_in(page, app, "alice", PASSWORD, "/conversations/import/")
    page.get_by_label("Choose files").set_input_files(str(source))
    page.locator("#import-form").get_by_role("button", name="Import", exact=True).click()
    expect(page.locator("[data-import-report]")).to_contain_text("2 conversations imported")
    page.get_by_role("link", name="Weather in Lyon").click()
    expect(page).to_have_url(re.compile(r"/conversations/\d+/$"))
    expect(page.locator("#message-2")).to_contain_text("get_weather")

    review_turn(page, 4, text=EDITED)
    expect(page.locator("#message-4 .content")).to_have_text(EDITED)
    expect(page.locator("#message-4 .role")).to_contain_text("edited")
    review_turn(page, 6, weight="Context only (weight 0)")
    expect(page.locator("#message-6 [data-weight='0']")).to_have_text("context only")
    page.get_by_role("button", name="Mark reviewed", exact=True).click()
    expect(flash(page)).to_have_text("Marked reviewed.")
    expect(page.locator("[data-reviewed]")).to_contain_text("reviewed by alice")
    expect(page.get_by_role("button", name="Unmark reviewed")).to_be_visible()
    shot(page, "34-conversation-reviewed")

    page.locator(".sidebar").get_by_role("link", name="Conversations").click()
    page.get_by_text("Download multi-turn dataset").click()
    with page.expect_download() as download_info:
        page.get_by_role("link", name="OpenAI chat JSONL · reviewed conversations").click()
    download = download_info.value
    assert download.suggested_filename == "conversations-openai-multiturn-reviewed.jsonl"
    [line] = Path(download.path()).read_text().splitlines()  # the unreviewed one stays out
    messages = json.loads(line)["messages"]
    assert [m["role"] for m in messages] == ["system", "user", "assistant", "tool", "assistant", "user", "assistant"]
    assert messages[2]["tool_calls"] == [CALL]
    assert messages[3] == {"role": "tool", "content": '{"temp": 21, "sky": "clear"}', "tool_call_id": "call_weather_1"}
    assert (messages[4]["content"], messages[4]["weight"]) == (EDITED, 1)
    assert (messages[6]["content"], messages[6]["weight"]) == ("No need today.", 0)
    assert not watched.problems, watched.problems
