"""Crafted JSON gets a 400 with the reason, never a 500, and stores nothing.

`json.loads` takes a lone surrogate ("\\ud800", which no database stores as UTF-8), nesting
past the recursion limit (a RecursionError) and a 5,000-digit number (a ValueError that is
not a JSONDecodeError). Every door that reads JSON from a user reads it through
`masscer.lib.jsonsafe`: the API's body parser, the conversation import (API and page) and
the playground's history. A hypothesis fuzz test sends such values at the JSON bodies.
"""
from __future__ import annotations

import json
from typing import Any

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.test import Client
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conversations.models import Conversation
from masscer.lib import jsonsafe
from training.models import Completion, TrainingJob
from training.tests.factories import make_agent, make_chunk, make_completions, make_document, make_job
from workspaces.services import api_token_create

pytestmark = pytest.mark.django_db

LONE_SURROGATE = '"\\ud800"'
DEEP = "[" * 200_000 + "]" * 200_000
HUGE_NUMBER = "1" * 5000
JOB_BODY = '{"count": 1, "documents": [{document}], "agents": [{agent}]'


@pytest.fixture(autouse=True)
def fast_passwords(settings: Any) -> None:
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


@pytest.fixture
def world(alice: Any) -> dict[str, Any]:
    document = make_document(alice)
    job = make_job(alice, count=1)
    completion = make_completions(job, make_chunk(document), [("What is the refund window?", "30 days.")])[0]
    return {
        "token": api_token_create(user=alice, name="tests")[1],
        "agent": make_agent(alice),
        "document": document,
        "completion": completion,
    }


def send(method: str, url: str, token: str, raw: str) -> Any:
    headers = {"Authorization": f"Bearer {token}"}
    return getattr(Client(), method)(url, raw, content_type="application/json", headers=headers)


def detail(response: Any) -> str:
    return str(response.json()["detail"])


# --- the units ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        (LONE_SURROGATE, "lone UTF-16 surrogate"),
        ('{"a": ["ok", {"b": "\\udfff"}]}', "lone UTF-16 surrogate"),
        (DEEP, "nested too deeply"),
        ("[" * 100 + "]" * 100, "nested too deeply"),
        (HUGE_NUMBER, "cannot be read"),
        ('{"a": ', "not valid JSON"),
        (b"\xff\xfe{", "not UTF-8"),
    ],
)
def test_jsonsafe_says_what_is_wrong(text: str | bytes, reason: str) -> None:
    with pytest.raises(jsonsafe.JSONInputError, match=reason):
        jsonsafe.loads(text)


def test_jsonsafe_takes_ordinary_json_with_real_emoji() -> None:
    value = jsonsafe.loads('{"q": "\\ud83d\\ude00 ok", "n": [1, 2.5, null]}')
    assert value == {"q": "\U0001f600 ok", "n": [1, 2.5, None]}


# --- the API --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "url", "raw"),
    [
        ("patch", "/api/completions/{completion}", '{"question": ' + LONE_SURROGATE + "}"),
        ("patch", "/api/agents/{agent}", '{"system_prompt": ' + LONE_SURROGATE + "}"),
        ("post", "/api/jobs", JOB_BODY + ', "stop": [' + LONE_SURROGATE + "]}"),
        ("patch", "/api/completions/{completion}", DEEP),
        ("post", "/api/jobs", '{"count": ' + HUGE_NUMBER + ', "documents": [{document}], "agents": [{agent}]}'),
    ],
)
def test_crafted_api_bodies_are_refused_with_the_reason(world: dict[str, Any], method: str, url: str, raw: str) -> None:
    ids = {"completion": world["completion"].pk, "agent": world["agent"].pk, "document": world["document"].pk}
    url = url.format(**ids)
    raw = raw.replace("{document}", str(ids["document"])).replace("{agent}", str(ids["agent"]))
    jobs_before = TrainingJob.objects.count()

    response = send(method, url, world["token"], raw)

    assert response.status_code == 400, response.content[:300]
    assert any(word in detail(response) for word in ("surrogate", "nested too deeply", "cannot be read"))
    assert TrainingJob.objects.count() == jobs_before
    assert Completion.objects.get(pk=world["completion"].pk).question == "What is the refund window?"


# --- conversation import: the API and the page ---------------------------------------------

CRAFTED_IMPORTS = {
    "lone surrogate": '[{"messages": [{"role": "user", "content": ' + LONE_SURROGATE + "}]}]",
    "deep": DEEP,
    "huge number": '[{"messages": [{"role": "user", "content": "Hi", "n": ' + HUGE_NUMBER + "}]}]",
}
REASONS = {"lone surrogate": "surrogate", "deep": "nested too deeply", "huge number": "cannot be read"}


@pytest.mark.parametrize("case", sorted(CRAFTED_IMPORTS))
def test_a_crafted_import_through_the_api_is_a_400_and_stores_nothing(world: dict[str, Any], case: str) -> None:
    upload = SimpleUploadedFile("chats.json", CRAFTED_IMPORTS[case].encode(), content_type="application/json")
    response = Client().post(
        "/api/conversations/import", {"file": upload}, headers={"Authorization": f"Bearer {world['token']}"}
    )
    assert response.status_code == 400, response.content[:300]
    assert REASONS[case] in detail(response)
    assert not Conversation.objects.exists()


@pytest.mark.parametrize("case", sorted(CRAFTED_IMPORTS))
def test_a_crafted_import_through_the_page_shows_the_reason(alice: Any, case: str) -> None:
    browser = Client()
    browser.force_login(alice)
    upload = SimpleUploadedFile("chats.json", CRAFTED_IMPORTS[case].encode(), content_type="application/json")
    response = browser.post("/conversations/import/", {"files": upload})
    assert response.status_code in (200, 400), response.status_code
    assert REASONS[case] in response.content.decode()
    assert not Conversation.objects.exists()


def test_one_crafted_line_of_a_jsonl_import_is_reported_and_the_rest_imported(world: dict[str, Any]) -> None:
    good = json.dumps({"messages": [{"role": "user", "content": "Hi?"}, {"role": "assistant", "content": "Hello."}]})
    bad = '{"messages": [{"role": "user", "content": ' + LONE_SURROGATE + "}]}"
    upload = SimpleUploadedFile("chats.jsonl", f"{good}\n{bad}\n".encode(), content_type="application/jsonl")
    response = Client().post(
        "/api/conversations/import", {"file": upload}, headers={"Authorization": f"Bearer {world['token']}"}
    )
    assert response.status_code == 201, response.content[:300]
    assert Conversation.objects.count() == 1
    assert "surrogate" in json.dumps(response.json())


# --- the playground ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "history", ["[" * 100_000 + "]" * 100_000, '[{"role": "user", "content": ' + LONE_SURROGATE + "}]"]
)
def test_a_crafted_playground_history_is_a_400(alice: Any, world: dict[str, Any], history: str) -> None:
    browser = Client()
    browser.force_login(alice)
    url = f"/agents/{world['agent'].pk}/playground/stream/"
    response = browser.post(url, {"message": "Hello?", "history": history})
    assert response.status_code == 400, response.status_code
    body = json.dumps(response.json()) if response.get("Content-Type", "").startswith("application/json") else ""
    assert "nested too deeply" in body or "surrogate" in body


# --- a fuzz test over the JSON bodies -------------------------------------------------------

NASTY_TEXT = st.one_of(
    st.text(max_size=20),
    st.sampled_from(["\ud800", "\udfff", "a\ud83dz", "\x00", "\u202e", "😀"]),
)
LEAVES = st.one_of(
    st.none(), st.booleans(), NASTY_TEXT, st.integers(min_value=-(10**6), max_value=10**6),
    st.floats(allow_nan=False, allow_infinity=False), st.just("<huge number>"),
)
VALUES = st.recursive(
    LEAVES,
    lambda children: st.lists(children, max_size=3) | st.dictionaries(NASTY_TEXT, children, max_size=3),
    max_leaves=12,
)


def _raw(value: Any) -> str:
    # json.dumps escapes lone surrogates as \\udXXX, as a crafted file would.
    return json.dumps(value).replace('"<huge number>"', HUGE_NUMBER)


FIELDS = {
    "/api/completions/{completion}": ("patch", ["question", "answer", "evidence", "status"]),
    "/api/agents/{agent}": ("patch", ["name", "system_prompt", "model", "temperature"]),
    "/api/jobs": ("post", ["count", "documents", "agents", "stop", "model", "instructions", "temperature"]),
}


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(url=st.sampled_from(sorted(FIELDS)), field=st.integers(0, 6), value=VALUES, deep=st.integers(0, 3))
def test_no_json_body_makes_a_500(world: dict[str, Any], url: str, field: int, value: Any, deep: int) -> None:
    method, names = FIELDS[url]
    ids = {"completion": world["completion"].pk, "agent": world["agent"].pk}
    body = {names[field % len(names)]: value}
    if url == "/api/jobs":
        body = {"count": 1, "documents": [world["document"].pk], "agents": [ids["agent"]], **body}
    raw = _raw(body)
    if deep:
        raw = "[" * (10 ** (deep + 2)) + raw + "]" * (10 ** (deep + 2))
    response = send(method, url.format(**ids), world["token"], raw)
    assert response.status_code < 500, (raw[:200], response.content[:300])


# --- a fuzz test over the pages' forms and query strings -----------------------------------

FORM_VALUES = st.one_of(
    st.sampled_from(["abc", "²", "٣", "1" * 5000, "-1", "0", "1e309", "nan", "inf", "", " ", "\x00", "😀", "9" * 19]),
    st.text(max_size=12),
    st.integers(min_value=-(10**20), max_value=10**20).map(str),
)
TRAIN_FIELDS = ["documents", "conversations", "count", "agents", "new_agent", "model", "temperature", "top_p",
                "max_tokens", "frequency_penalty", "stop", "instructions", "budget", "style", "redact"]  # fmt: skip
FILTERS = ["job", "agent", "document", "conversation", "status", "q", "page", "scope"]
FORMS = {
    ("post", "/agents/{agent}/material/"): ["action", "target", "ids", "selection", "query", *FILTERS],
    ("post", "/jobs/review/bulk/"): ["action", "ids", "selection", *FILTERS],
    ("post", "/jobs/new/"): TRAIN_FIELDS,
    ("post", "/jobs/estimate/"): TRAIN_FIELDS,
    ("get", "/jobs/review/"): FILTERS,
    ("get", "/agents/{agent}/"): FILTERS,
    ("get", "/jobs/"): ["page", "status"],
    ("get", "/documents/"): ["page", "q", "status"],
    ("get", "/admin/training/completion/"): ["agent", "job", "status", "q", "p"],
}


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    route=st.sampled_from(sorted(FORMS)),
    values=st.lists(st.tuples(st.integers(0, 20), FORM_VALUES), min_size=1, max_size=5),
)
def test_no_form_or_query_string_makes_a_500(alice: Any, world: dict[str, Any], route: Any, values: Any) -> None:
    from django.db import connection

    method, url = route
    names = FORMS[route]
    data: dict[str, list[str]] = {}
    for index, value in values:
        data.setdefault(names[index % len(names)], []).append(value.replace("\x00", ""))  # no NUL in a URL
    browser = Client(raise_request_exception=False)
    browser.force_login(alice)
    with connection.cursor():  # the test database stays usable whatever the request did
        response = getattr(browser, method)(url.format(agent=world["agent"].pk), data)
    assert response.status_code < 500, (method, url, data)
