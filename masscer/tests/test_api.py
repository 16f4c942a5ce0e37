"""The JSON API: alice (owner, workspace admin), bob (teammate: a member) and charlie (outsider) on
every route; token and session auth; JSON errors; a schemathesis run against /api/openapi.json.
"""
from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.test import Client

from conversations.models import ConversationImport
from conversations.services import conversation_create
from documents.models import Document
from testing.members import add_member
from training.models import Completion, TrainingJob
from training.services.templates import template_create
from training.tests.factories import make_agent, make_chunk, make_completions, make_document, make_job, numbered
from training.tests.test_dedupe import ORIGINAL, PARAPHRASE
from workspaces.models import ApiToken, Invitation
from workspaces.services import api_token_create, api_token_revoke, membership_invite, workspace_personal

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def fast_passwords(settings: Any) -> None:
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


@pytest.fixture
def world(alice, bob, charlie) -> dict[str, Any]:
    workspace = workspace_personal(user=alice)
    add_member(actor=alice, workspace=workspace, user=bob, role="member")
    document = make_document(alice)
    spare_document = make_document(alice, title="Spare")
    messages = [{"role": "user", "content": "Hi?"}, {"role": "assistant", "content": "Hello."}]
    conversation = conversation_create(owner=alice, title="Chat", messages=messages)
    background = ConversationImport.objects.create(owner=alice, workspace=workspace, filename="big.jsonl", total=9)
    agent = make_agent(alice)
    spare_agent = make_agent(alice, slug="spare")
    job = make_job(alice, count=3)
    running = make_job(alice, status=TrainingJob.Status.GENERATING)
    chunk = make_chunk(document)
    rows = make_completions(job, chunk, numbered(3), agents=[agent])
    original = make_completions(job, chunk, [ORIGINAL], agents=[agent], status="approved")[0]
    make_completions(job, chunk, [PARAPHRASE], agents=[agent], duplicate_of=original)
    tokens = {user.username: api_token_create(user=user, name="tests")[1] for user in (alice, bob, charlie)}
    spare_token, _ = api_token_create(user=alice, name="spare")
    membership_invite(actor=alice, workspace=workspace, username="charlie")
    template, spare_template = (
        template_create(actor=alice, workspace=workspace, name=name, system="", user=TEMPLATE)
        for name in ("House style", "Spare style")
    )
    return {
        "template": template, "spare_template": spare_template,
        "invitation": Invitation.objects.get(user=charlie),
        "workspace": workspace, "document": document, "spare_document": spare_document,
        "conversation": conversation, "import": background, "agent": agent, "spare_agent": spare_agent, "job": job,
        "running": running,
        "completion": rows[0], "rows": rows, "original": original, "tokens": tokens, "spare_token": spare_token,
    }


def call(method: str, url: str, token: str | None, body: Any = None, **extra: Any) -> Any:
    client = Client()
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    if method in ("post", "patch", "delete") and body is not None and not isinstance(body, dict | list):
        body = body()
    if isinstance(body, dict) and any(hasattr(v, "read") for v in body.values()):
        return getattr(client, method)(url, body, headers=headers, **extra)  # multipart
    if body is not None:
        return getattr(client, method)(url, json.dumps(body), content_type="application/json", headers=headers)
    return getattr(client, method)(url, headers=headers, **extra)


def upload(name: str = "notes.txt", data: bytes = b"Some notes about refunds.") -> SimpleUploadedFile:
    return SimpleUploadedFile(name, data, content_type="text/plain")


TEMPLATE = "{rules}\n\n{source}\n\nNumber of pairs: {count}"
OPENAI_CHATS = json.dumps([{"messages": [{"role": "user", "content": "Hi?"}, {"role": "assistant", "content": "Hi!"}]}])


@dataclass(frozen=True)
class Route:
    method: str
    path: str  # formatted with the world
    body: Callable[[dict[str, Any]], Any] | None
    alice: int
    bob: int
    charlie: int


ROUTES = [
    Route("get", "/api/documents", None, 200, 200, 200),
    Route("post", "/api/documents", lambda w: {"file": upload(), "workspace": w["workspace"].pk}, 201, 201, 404),
    Route("get", "/api/documents/{document.pk}", None, 200, 200, 404),
    Route("delete", "/api/documents/{spare_document.pk}", None, 204, 403, 404),
    Route("post", "/api/conversations/import",
          lambda w: {"file": upload("chats.json", OPENAI_CHATS.encode()), "workspace": w["workspace"].pk},
          201, 201, 404),
    Route("get", "/api/conversations", None, 200, 200, 200),
    Route("get", "/api/conversations/{conversation.pk}", None, 200, 200, 404),
    Route("get", "/api/conversations/{conversation.pk}/messages", None, 200, 200, 404),
    Route("get", "/api/conversations/imports/{import.pk}", None, 200, 200, 404),
    Route("post", "/api/agents", lambda w: {"name": "Sales bot", "workspace": w["workspace"].pk}, 201, 201, 404),
    Route("get", "/api/agents", None, 200, 200, 200),
    Route("get", "/api/agents/{agent.pk}", None, 200, 200, 404),
    Route("patch", "/api/agents/{spare_agent.pk}", lambda w: {"system_prompt": "Be brief."}, 200, 403, 404),
    Route("delete", "/api/agents/{spare_agent.pk}", None, 204, 403, 404),
    Route("post", "/api/jobs",
          lambda w: {"count": 2, "documents": [w["document"].pk], "agents": [w["agent"].pk]}, 201, 403, 404),
    Route("get", "/api/jobs", None, 200, 200, 200),
    Route("get", "/api/jobs/{job.pk}", None, 200, 200, 404),
    Route("post", "/api/jobs/{running.pk}/cancel", None, 200, 403, 404),
    Route("post", "/api/jobs/{job.pk}/retry", None, 200, 403, 404),
    Route("get", "/api/completions", None, 200, 200, 200),
    Route("get", "/api/completions/{completion.pk}", None, 200, 200, 404),
    Route("post", "/api/completions/{completion.pk}/approve", None, 200, 403, 404),
    Route("post", "/api/completions/{completion.pk}/reject", None, 200, 403, 404),
    Route("patch", "/api/completions/{completion.pk}", lambda w: {"answer": "Better."}, 200, 403, 404),
    Route("post", "/api/completions/assign",
          lambda w: {"agent": w["spare_agent"].pk, "completion_ids": [w["completion"].pk]}, 200, 403, 404),
    Route("post", "/api/completions/unassign",
          lambda w: {"agent": w["agent"].pk, "completion_ids": [w["completion"].pk]}, 200, 403, 404),
    Route("post", "/api/completions/regenerate", lambda w: {"completion_ids": [w["completion"].pk]}, 200, 200, 200),
    Route("post", "/api/completions/{original.pk}/keep", lambda w: {"merge": True}, 200, 403, 404),
    Route("post", "/api/agents/{agent.pk}/duplicates", None, 200, 403, 404),
    Route("post", "/api/agents/{agent.pk}/rules",
          lambda w: {"completion_ids": [w["completion"].pk], "rule": "always"}, 200, 403, 404),
    Route("get", "/api/agents/{agent.pk}/explain", None, 200, 200, 404),
    Route("get", "/api/conversations/export", None, 200, 200, 200),
    Route("get", "/api/conversations/export/report", None, 200, 200, 200),
    Route("get", "/api/agents/{agent.pk}/export", None, 200, 200, 404),
    Route("get", "/api/agents/{agent.pk}/export/report", None, 200, 200, 404),
    Route("get", "/api/workspaces", None, 200, 200, 200),
    Route("post", "/api/workspaces/{workspace.pk}/members", lambda w: {"username": "charlie", "role": "reviewer"},
          202, 403, 404),
    Route("get", "/api/invitations", None, 200, 200, 200),
    Route("post", "/api/invitations/{invitation.pk}/accept", None, 404, 404, 200),
    Route("post", "/api/invitations/{invitation.pk}/decline", None, 404, 404, 204),
    Route("get", "/api/tokens", None, 200, 200, 200),
    Route("post", "/api/tokens", lambda w: {"name": "ci"}, 201, 201, 201),
    Route("delete", "/api/tokens/{spare_token.pk}", None, 204, 404, 404),
    Route("get", "/api/workspaces/{workspace.pk}/templates", None, 200, 200, 404),
    Route("post", "/api/workspaces/{workspace.pk}/templates", lambda w: {"name": "Sales style", "user": TEMPLATE},
          201, 201, 404),
    Route("post", "/api/workspaces/{workspace.pk}/templates/preview",
          lambda w: {"user": TEMPLATE, "conversation": w["conversation"].pk}, 200, 200, 404),
    Route("get", "/api/templates/{template.pk}", None, 200, 200, 404),
    Route("post", "/api/templates/{template.pk}/versions", lambda w: {"user": TEMPLATE + "\nShort."}, 201, 403, 404),
    Route("patch", "/api/templates/{template.pk}", lambda w: {"is_default": True}, 200, 403, 404),
    Route("delete", "/api/templates/{spare_template.pk}", None, 200, 403, 404),
]


def resolve(path: str, world: dict[str, Any]) -> str:
    class Lookup(dict):
        def __missing__(self, key: str) -> Any:
            return world[key]

    return path.format_map(Lookup())


@pytest.mark.parametrize("who", ["alice", "bob", "charlie"])
@pytest.mark.parametrize("route", ROUTES, ids=lambda r: f"{r.method} {r.path}")
def test_every_route_for_owner_teammate_and_outsider(route: Route, who: str, world) -> None:
    body = route.body(world) if route.body else None
    response = call(route.method, resolve(route.path, world), world["tokens"][who], body)
    assert response.status_code == getattr(route, who), response.content[:300]
    if response.status_code >= 400:
        assert set(response.json()) >= {"detail"} and isinstance(response.json()["detail"], str)


def test_every_route_is_in_the_table(client) -> None:
    def shape(path: str) -> str:
        return re.sub(r"\{[^}]*\}", "{}", path)

    schema = client.get("/api/openapi.json").json()
    documented = {(method, shape(path)) for path, ops in schema["paths"].items() for method in ops}
    assert documented == {(route.method, shape(route.path)) for route in ROUTES}


# --- what the outsider and the teammate see ---------------------------------------------------


def test_lists_hold_only_the_users_workspaces(world) -> None:
    for who, expected in (("alice", 2), ("bob", 2), ("charlie", 0)):
        body = call("get", "/api/documents", world["tokens"][who]).json()
        assert body["count"] == expected and len(body["items"]) == expected
    completions = call("get", "/api/completions?status=pending&limit=2", world["tokens"]["bob"]).json()
    assert completions["count"] == 4 and len(completions["items"]) == 2


@pytest.mark.parametrize("path", ["/api/completions", "/api/jobs", "/api/documents", "/api/agents",
                                  "/api/conversations"])
def test_lists_cost_the_same_queries_for_few_and_many_rows(world, path) -> None:
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    alice = world["agent"].owner

    def queries() -> int:
        with CaptureQueriesContext(connection) as captured:
            assert call("get", path, world["tokens"]["alice"]).status_code == 200
        return len(captured)

    queries()  # the token's first use records last_used_at
    few = queries()
    for n in range(12):
        agent = make_agent(alice, slug=f"more-{n}")
        job = make_job(alice)
        job.agents.add(agent)
        job.documents.add(world["document"])
        make_completions(job, make_chunk(make_document(alice, title=f"More {n}")), numbered(1, start=300 + n),
                         agents=[agent], reviewed_by=alice)
        conversation_create(owner=alice, title=f"More {n}", messages=[{"role": "user", "content": "Hi?"}])
    assert queries() == few


@pytest.mark.parametrize("rows", [10, 200])
@pytest.mark.parametrize("query", ["", "?limit=5&offset=5", "?status=approved&limit=5&offset=3"])
def test_the_completions_list_costs_the_same_queries_for_10_and_200(
    client, alice, rows, query, django_assert_num_queries
) -> None:
    agent = make_agent(alice)
    made = make_completions(make_job(alice), make_chunk(make_document(alice)), numbered(rows), agents=[agent])
    Completion.objects.filter(pk__in=[c.pk for c in made[::2]]).update(status="approved")
    client.force_login(alice)
    # session, user, count, the page's ids, its rows (chunk and source joined), assignments prefetch
    with django_assert_num_queries(6):
        body = client.get(f"/api/completions{query}").json()
    count = rows // 2 if "approved" in query else rows
    limit, offset = (5, int(query.rsplit("=", 1)[1])) if query else (50, 0)
    assert (body["count"], len(body["items"])) == (count, min(limit, count - offset))


def test_a_deep_offset_returns_the_rows_in_list_order(client, alice) -> None:
    made = make_completions(make_job(alice), make_chunk(make_document(alice)), numbered(30))
    client.force_login(alice)
    newest_first = [c.pk for c in reversed(made)]
    assert [c["id"] for c in client.get("/api/completions?limit=7&offset=20").json()["items"]] == newest_first[20:27]


def test_completions_filter_like_the_review_queue(world) -> None:
    token = world["tokens"]["alice"]
    ids = lambda query: {c["id"] for c in call("get", f"/api/completions?{query}", token).json()["items"]}  # noqa: E731
    assert ids("status=approved") == {world["original"].pk}
    assert ids("duplicates=true") == {world["original"].pk + 1}
    assert ids(f"q={world['completion'].question.split()[2]}") >= {world["completion"].pk}
    assert ids(f"job={world['running'].pk}") == set()
    assert len(ids(f"agent={world['agent'].pk}&source_type=document")) == 5


def test_an_edit_keeps_the_original_text(world) -> None:
    completion = world["completion"]
    body = call("patch", f"/api/completions/{completion.pk}", world["tokens"]["alice"],
                {"question": "Better question?", "status": "approved"}).json()
    assert body["question"] == "Better question?" and body["edited"] and body["status"] == "approved"
    assert body["original_question"] == completion.question and body["reviewed_by"] == "alice"


def test_a_job_reports_its_progress(world) -> None:
    body = call("get", f"/api/jobs/{world['job'].pk}", world["tokens"]["bob"]).json()
    assert body["status"] == "completed" and body["completions_created"] == 3 and body["job_id"] == world["job"].pk


def test_the_export_streams_the_file(world) -> None:
    Completion.objects.update(status="approved")
    response = call("get", f"/api/agents/{world['agent'].pk}/export?format=openai-jsonl", world["tokens"]["bob"])
    assert response.streaming and response["Content-Type"].startswith("application/jsonl")
    assert 'filename="support.jsonl"' in response["Content-Disposition"]
    lines = b"".join(response.streaming_content).decode().splitlines()
    assert len(lines) == 5 and json.loads(lines[0])["messages"][0]["role"] == "system"
    alpaca = call("get", f"/api/agents/{world['agent'].pk}/export?format=alpaca", world["tokens"]["bob"])
    assert len(json.loads(b"".join(alpaca.streaming_content))) == 5


def test_the_export_report_names_skipped_examples(world) -> None:
    Completion.objects.filter(pk=world["original"].pk).update(answer="word " * 300)
    report = call("get", f"/api/agents/{world['agent'].pk}/export/report?max_tokens=200", world["tokens"]["bob"])
    assert report.json()["skipped"] == {"too_many_tokens": 1}


def test_assigning_reports_what_was_skipped(world, django_user_model) -> None:
    foreign = make_completions(make_job(django_user_model.objects.create_user("eve")),
                               make_chunk(make_document(django_user_model.objects.get(username="eve"))),
                               numbered(1, start=80))[0]
    body = call("post", "/api/completions/assign", world["tokens"]["alice"],
                {"agent": world["spare_agent"].pk, "completion_ids": [world["completion"].pk, foreign.pk]}).json()
    assert body == {"done": 1, "skipped": {"not found": [foreign.pk]}}


# --- authentication -----------------------------------------------------------------------------


def test_no_credentials_is_401_with_a_json_message(world) -> None:
    response = call("get", "/api/documents", None)
    assert response.status_code == 401 and "Bearer" in response.json()["detail"]
    assert response["WWW-Authenticate"].startswith("Bearer")
    assert call("post", "/api/agents", None, {"name": "x"}).status_code == 401


def test_unknown_and_revoked_tokens_are_refused(alice, world) -> None:
    assert call("get", "/api/documents", "msk_not-a-real-token").status_code == 401
    token = ApiToken.objects.get(user=alice, name="tests")
    api_token_revoke(actor=alice, token=token)
    assert call("get", "/api/documents", world["tokens"]["alice"]).status_code == 401


def test_tokens_are_stored_hashed_and_shown_once(alice) -> None:
    token, raw = api_token_create(user=alice, name="script")
    assert raw.startswith("msk_") and raw not in (token.key_hash, token.prefix) and len(token.key_hash) == 64
    listed = call("get", "/api/tokens", raw).json()
    assert all("token" not in item for item in listed)
    assert ApiToken.objects.get(pk=token.pk).last_used_at is not None


def test_a_token_made_through_the_api_works_until_revoked(world) -> None:
    made = call("post", "/api/tokens", world["tokens"]["bob"], {"name": "laptop"}).json()
    assert call("get", "/api/agents", made["token"]).status_code == 200
    assert call("delete", f"/api/tokens/{made['id']}", made["token"]).status_code == 204
    assert call("get", "/api/agents", made["token"]).status_code == 401


def test_session_auth_needs_the_csrf_token_for_writes(alice, world) -> None:
    client = Client(enforce_csrf_checks=True)
    client.force_login(alice)
    assert client.get("/api/agents").status_code == 200
    refused = client.post("/api/agents", json.dumps({"name": "Ops"}), content_type="application/json")
    assert refused.status_code == 403 and "CSRF" in refused.json()["detail"]
    client.get("/admin/login/")  # any page that sets the CSRF cookie
    csrf = client.cookies["csrftoken"].value
    accepted = client.post("/api/agents", json.dumps({"name": "Ops"}), content_type="application/json",
                           headers={"X-CSRFToken": csrf})
    assert accepted.status_code == 201


def test_a_bearer_token_needs_no_csrf_token(world) -> None:
    client = Client(enforce_csrf_checks=True)
    response = client.post("/api/agents", json.dumps({"name": "Ops"}), content_type="application/json",
                           headers={"Authorization": f"Bearer {world['tokens']['alice']}"})
    assert response.status_code == 201


# --- errors ----------------------------------------------------------------------------------------


def test_service_validation_errors_are_400_with_the_message(world, settings) -> None:
    settings.MASSCER_MAX_COMPLETIONS_PER_JOB = 100
    response = call("post", "/api/jobs", world["tokens"]["alice"], {"count": 500, "documents": [world["document"].pk]})
    assert response.status_code == 400
    assert response.json()["detail"] == "Number of completions must be at most 100 per job (asked for 500)."
    no_source = call("post", "/api/jobs", world["tokens"]["alice"], {"count": 5})
    assert no_source.json()["detail"] == "Choose at least one document or conversation to train with."


def test_schema_errors_are_400_with_a_readable_message(world) -> None:
    response = call("post", "/api/jobs", world["tokens"]["alice"], {"count": "many"})
    assert response.status_code == 400 and response.json()["detail"].startswith("count:")
    assert call("get", "/api/completions?status=maybe", world["tokens"]["alice"]).status_code == 400
    assert call("post", "/api/agents", world["tokens"]["alice"], {"name": "a\x00b"}).status_code == 400


def test_duplicate_agent_slugs_are_400(world) -> None:
    response = call("post", "/api/agents", world["tokens"]["alice"], {"name": "Support"})
    assert response.status_code == 400 and "already has an agent" in response.json()["detail"]


def test_naming_an_invisible_object_in_a_body_is_404(world, django_user_model) -> None:
    foreign = make_document(django_user_model.objects.create_user("eve"))
    response = call("post", "/api/jobs", world["tokens"]["alice"], {"count": 2, "documents": [foreign.pk]})
    assert response.status_code == 404 and response.json()["detail"] == f"Document {foreign.pk} not found."


def test_an_oversized_upload_is_413_and_stores_nothing(world, settings) -> None:
    settings.MASSCER_MAX_UPLOAD_BYTES = 10
    before = Document.objects.count()
    response = call("post", "/api/documents", world["tokens"]["alice"], {"file": upload(data=b"x" * 11)})
    assert response.status_code == 413 and "limit" in response.json()["detail"]
    imported = call("post", "/api/conversations/import", world["tokens"]["alice"],
                    {"file": upload("c.json", b"[" + b" " * 20 + b"]")})
    assert imported.status_code == 413
    assert Document.objects.count() == before


def test_an_empty_upload_is_400(world) -> None:
    response = call("post", "/api/documents", world["tokens"]["alice"], {"file": upload(data=b"")})
    assert response.status_code == 400 and "empty" in response.json()["detail"]


def test_a_document_with_completions_cannot_be_deleted(world) -> None:
    response = call("delete", f"/api/documents/{world['document'].pk}", world["tokens"]["alice"])
    assert response.status_code == 409 and "Completions" in response.json()["detail"]


def test_ending_a_finished_job_is_409(world) -> None:
    response = call("post", f"/api/jobs/{world['job'].pk}/cancel", world["tokens"]["alice"])
    assert response.status_code == 409 and "already ended" in response.json()["detail"]


def test_an_unreadable_import_is_400(world) -> None:
    response = call("post", "/api/conversations/import", world["tokens"]["alice"], {"file": upload("x.json", b"{")})
    assert response.status_code == 400 and response.json()["detail"]


def test_huge_ids_are_404_or_400_not_500(world) -> None:
    token = world["tokens"]["alice"]
    assert call("get", f"/api/documents/{2**70}", token).status_code in (400, 404)
    assert call("post", "/api/jobs", token, {"count": 1, "documents": [2**70]}).status_code == 400
    assert call("get", "/api/completions?offset=99999999999999999999", token).status_code == 400


# --- schemathesis ------------------------------------------------------------------------------------
#
# Every operation of /api/openapi.json gets generated requests, valid and invalid, as alice (so the
# requests reach the handlers) and must never get a 5xx. Driven through Hypothesis directly, in
# process through the WSGI application: schemathesis' own pytest loader does not run on pytest 9.

schemathesis = pytest.importorskip("schemathesis")
from hypothesis import HealthCheck, given  # noqa: E402
from hypothesis import settings as hypothesis_settings  # noqa: E402
from schemathesis import GenerationMode  # noqa: E402
from schemathesis.checks import not_a_server_error  # noqa: E402

EXAMPLES = {GenerationMode.POSITIVE: 8, GenerationMode.NEGATIVE: 5}


@pytest.fixture
def keep_test_connection() -> Any:
    """Calling the WSGI app directly would close the test's database connection at the end of
    each request (Django's test client switches that off the same way)."""
    from django.core.signals import request_finished, request_started
    from django.db import close_old_connections

    request_started.disconnect(close_old_connections)
    request_finished.disconnect(close_old_connections)
    yield
    request_started.connect(close_old_connections)
    request_finished.connect(close_old_connections)


def test_the_api_never_answers_with_a_server_error(world, keep_test_connection) -> None:
    from masscer.wsgi import application

    schema = schemathesis.openapi.from_wsgi("/api/openapi.json", application)
    headers = {"Authorization": f"Bearer {world['tokens']['alice']}"}
    # Random ids mostly meet 404s; the same operations also run on alice's real objects.
    real_ids = {
        "document_id": world["document"].pk, "conversation_id": world["conversation"].pk,
        "agent_id": world["agent"].pk, "job_id": world["job"].pk, "completion_id": world["completion"].pk,
        "token_id": world["spare_token"].pk, "import_id": world["import"].pk,
        "workspace_id": world["workspace"].pk, "invitation_id": world["invitation"].pk,
        "template_id": world["template"].pk,
    }
    failures: list[str] = []
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 30
    operations.sort(key=lambda op: op.method.upper() == "DELETE")  # deletions last
    runs = [(mode, examples, None) for mode, examples in EXAMPLES.items()]
    runs.append((GenerationMode.POSITIVE, EXAMPLES[GenerationMode.POSITIVE], real_ids))
    for operation in operations:
        for mode, examples, ids in runs:
            fixed = {param.name: ids[param.name] for param in operation.path_parameters} if ids else None
            if ids is not None and not fixed:
                continue

            @given(case=operation.as_strategy(generation_mode=mode, path_parameters=fixed))
            @hypothesis_settings(
                max_examples=examples, deadline=None, derandomize=True, database=None,
                suppress_health_check=list(HealthCheck),
            )
            def check(case: Any) -> None:
                case.call_and_validate(headers=headers, checks=[not_a_server_error])

            try:
                check()
            except Exception as exc:  # collect all, report together
                failures.append(f"{operation.method.upper()} {operation.path} ({mode}): {exc}"[:2000])
    assert not failures, "\n\n".join(failures)
