"""/v1: the real openai client, pointed at the running app, chats with alice's agent.

alice owns the "support" agent (and "sales"); bob has an agent of his own in his workspace;
charlie is an outsider with a token. The model behind the agents is the fake model server,
which logs every prompt it is sent.
"""
from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import openai
import pytest

from agents.models import Agent
from agents.retrieval import forget_indexes
from agents.tests.test_retrieval import PENDING, REJECTED, material, other_agent
from conversations.models import Conversation, Message
from testing.fakellm import chat_reply
from workspaces.services import api_token_create

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture(autouse=True)
def fresh_indexes() -> Iterator[None]:
    forget_indexes()
    yield
    forget_indexes()


def token(user: Any) -> str:
    return api_token_create(user=user, name="sdk")[1]


def sdk(live_server: Any, user: Any, **kwargs: Any) -> openai.OpenAI:
    return openai.OpenAI(base_url=live_server.url + "/v1", api_key=token(user), max_retries=0, **kwargs)


def ask(client: openai.OpenAI, text: str, model: str = "support", **kwargs: Any) -> Any:
    return client.chat.completions.create(model=model, messages=[{"role": "user", "content": text}], **kwargs)


# --- models ------------------------------------------------------------------------------------


def test_models_lists_exactly_the_tokens_agents(live_server, alice, bob, charlie, agent) -> None:
    other_agent(alice, "sales")
    other_agent(bob, "billing")
    assert sorted(m.id for m in sdk(live_server, alice).models.list()) == ["sales", "support"]
    assert [m.id for m in sdk(live_server, bob).models.list()] == ["billing"]
    assert list(sdk(live_server, charlie).models.list()) == []
    assert sdk(live_server, alice).models.retrieve("support").owned_by == agent.workspace.name


# --- chatting ----------------------------------------------------------------------------------


def test_a_chat_returns_the_agents_answer_with_usage(live_server, alice, agent, fake_llm) -> None:
    reply = ask(sdk(live_server, alice), "Where is my parcel?")
    [call] = fake_llm.calls
    assert reply.choices[0].message.content == chat_reply(call["request"]["messages"])
    assert reply.choices[0].finish_reason == "stop" and reply.model == "support"
    assert reply.usage.prompt_tokens > 0 and reply.usage.completion_tokens > 0
    assert reply.usage.total_tokens == reply.usage.prompt_tokens + reply.usage.completion_tokens
    system = call["request"]["messages"][0]
    assert system["role"] == "system" and system["content"].startswith("You help customers.")


def test_a_streamed_chat_ends_with_a_finish_reason_usage_and_done(live_server, alice, agent, fake_llm) -> None:
    stream = ask(sdk(live_server, alice), "Where is my parcel?", stream=True, stream_options={"include_usage": True})
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == chat_reply(fake_llm.calls[0]["request"]["messages"])
    assert len([c for c in chunks if c.choices and c.choices[0].delta.content]) > 5
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finishes == ["stop"]
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens > 0
    body = {"model": "support", "stream": True, "messages": [{"role": "user", "content": "Hi"}]}
    raw = post(live_server, "/v1/chat/completions", body, token(alice))
    assert raw.headers["content-type"] == "text/event-stream"
    assert raw.text.rstrip().endswith("data: [DONE]")
    assert '"finish_reason": "stop"' in raw.text


def test_the_prompt_holds_the_approved_material_that_matches_and_nothing_else(
    live_server, alice, agent, fake_llm
) -> None:
    material(agent, "How do I get a refund for my order?", "Open Billing and press Refund.")
    material(agent, "What are your opening hours?", "Nine to five.")
    material(agent, "Can I get a refund in cash?", status=PENDING)
    material(agent, "Is a refund possible after a year?", status=REJECTED)
    reply = ask(sdk(live_server, alice), "How does a refund work?")
    prompt = fake_llm.calls[0]["prompt"]
    assert "How do I get a refund for my order?" in prompt and "Open Billing and press Refund." in prompt
    for hidden in ("opening hours", "in cash", "after a year"):
        assert hidden not in prompt
    assert "«How do I get a refund for my order?»" in reply.choices[0].message.content


def test_another_workspaces_token_gets_404_model_not_found(live_server, alice, charlie, agent, fake_llm) -> None:
    with pytest.raises(openai.NotFoundError) as caught:
        ask(sdk(live_server, charlie), "Hi")
    assert caught.value.status_code == 404
    assert caught.value.body == {
        "message": "The model 'support' does not exist or you do not have access to it.",
        "type": "invalid_request_error", "param": "model", "code": "model_not_found",
    }  # fmt: skip
    with pytest.raises(openai.NotFoundError):
        sdk(live_server, charlie).models.retrieve("support")
    assert fake_llm.calls == []


def test_parameters_reach_the_model_and_the_agents_stand_for_the_rest(live_server, alice, agent, fake_llm) -> None:
    Agent.objects.filter(pk=agent.pk).update(model="agent-model", temperature=0.9, frequency_penalty=0.5)
    ask(sdk(live_server, alice), "Hi", temperature=0.2, top_p=0.7, max_tokens=300, stop=["END", "###"])
    request = fake_llm.calls[0]["request"]
    assert request["model"] == "agent-model"
    assert (request["temperature"], request["top_p"], request["max_tokens"]) == (0.2, 0.7, 300)
    assert request["stop"] == ["END", "###"] and request["frequency_penalty"] == 0.5


def test_system_assistant_and_tool_messages_reach_the_model(live_server, alice, agent, fake_llm) -> None:
    call = {"id": "call_1", "type": "function", "function": {"name": "track", "arguments": '{"id": 7}'}}
    messages = [
        {"role": "system", "content": "Answer in French."},
        {"role": "user", "content": "Where is parcel 7?"},
        {"role": "assistant", "content": None, "tool_calls": [call]},
        {"role": "tool", "tool_call_id": "call_1", "content": "In Lyon."},
        {"role": "user", "content": [{"type": "text", "text": "And now?"}]},
    ]
    sdk(live_server, alice).chat.completions.create(model="support", messages=messages)
    sent = fake_llm.calls[0]["request"]["messages"]
    assert [m["role"] for m in sent] == ["system", "system", "user", "assistant", "tool", "user"]
    assert sent[3]["tool_calls"] == [call] and sent[4]["tool_call_id"] == "call_1"
    assert sent[5]["content"] == "And now?"


@pytest.mark.parametrize("reason", ["length", "content_filter", "tool_calls"])
def test_the_finish_reason_is_passed_through(live_server, alice, agent, fake_llm, reason) -> None:
    fake_llm.script([{"kind": "good", "finish_reason": reason, "times": 2}])
    client = sdk(live_server, alice)
    assert ask(client, "Hi").choices[0].finish_reason == reason
    finishes = [c.choices[0].finish_reason for c in ask(client, "Hi", stream=True) if c.choices]
    assert finishes[-1] == reason


def test_a_429_of_the_model_is_a_429_with_retry_after(live_server, alice, agent, fake_llm) -> None:
    fake_llm.script([{"kind": "http_error", "status": 429, "retry_after": 7, "times": 2}])
    client = sdk(live_server, alice)
    for stream in (False, True):
        with pytest.raises(openai.RateLimitError) as caught:
            ask(client, "Hi", stream=stream)
        assert caught.value.response.headers["Retry-After"] == "7"
        assert caught.value.body["code"] == "rate_limit_exceeded"


def test_the_legacy_completions_api_takes_the_prompt_as_the_users_turn(live_server, alice, agent, fake_llm) -> None:
    client = sdk(live_server, alice)
    reply = client.completions.create(model="support", prompt="Where is my parcel?", max_tokens=200)
    sent = fake_llm.calls[0]["request"]["messages"]
    assert sent[-1] == {"role": "user", "content": "Where is my parcel?"}
    assert reply.choices[0].text == chat_reply(sent) and reply.usage.total_tokens > 0
    streamed = "".join(c.choices[0].text for c in client.completions.create(model="support", prompt="Hi", stream=True))
    assert streamed == chat_reply(fake_llm.calls[1]["request"]["messages"])


# --- refusals ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Response:
    status_code: int
    headers: Any
    text: str

    def json(self) -> Any:
        return json.loads(self.text)


def request(method: str, url: str, body: Any = None, key: str | None = None) -> Response:
    """A plain HTTP request (stdlib), for what the SDK hides: status lines, raw events."""
    data = None if body is None else body if isinstance(body, bytes) else json.dumps(body).encode()
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    if data is not None:
        headers["Content-Type"] = "application/json"
    try:
        with urllib.request.urlopen(urllib.request.Request(url, data=data, headers=headers, method=method)) as r:
            return Response(r.status, r.headers, r.read().decode())
    except urllib.error.HTTPError as exc:
        return Response(exc.code, exc.headers, exc.read().decode())


def post(live_server: Any, path: str, body: Any, key: str | None) -> Response:
    return request("POST", live_server.url + path, body, key)


def assert_openai_error(response: Response, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["message"]
    return error


def test_bad_requests_get_clear_openai_errors(live_server, alice, agent, fake_llm) -> None:
    key = token(alice)
    chat = "/v1/chat/completions"
    hi = [{"role": "user", "content": "Hi"}]
    assert_openai_error(post(live_server, chat, {"model": "support", "messages": hi}, None), 401)
    assert_openai_error(post(live_server, chat, {"model": "support", "messages": hi}, "msk_wrong"), 401)
    assert_openai_error(post(live_server, chat, b"{not json", key), 400)
    assert_openai_error(post(live_server, chat, b"[" * 5000 + b"]" * 5000, key), 400)
    assert_openai_error(post(live_server, chat, b'{"model": "\\ud800"}', key), 400)
    for body, param in (
        ({"messages": hi}, "model"),
        ({"model": "support"}, "messages"),
        ({"model": "support", "messages": [{"role": "wizard", "content": "Hi"}]}, "messages[0].role"),
        ({"model": "support", "messages": hi, "temperature": 7}, "temperature"),
        ({"model": "support", "messages": hi, "max_tokens": "many"}, "max_tokens"),
        ({"model": "support", "messages": hi, "stop": ["a", "b", "c", "d", "e"]}, "stop"),
        ({"model": "support", "messages": hi, "tools": [{"type": "function"}]}, "tools"),
        ({"model": "support", "messages": [{"role": "tool", "content": "x"}, *hi]}, "messages[0].tool_call_id"),
    ):
        assert assert_openai_error(post(live_server, chat, body, key), 400)["param"] == param
    assert_openai_error(request("GET", live_server.url + chat, key=key), 405)
    assert fake_llm.calls == []


# --- the walk: every /v1 route, for the outsider ------------------------------------------------

V1_ROUTES = {
    "models": ("GET", "/v1/models"),
    "model": ("GET", "/v1/models/support"),
    "chat_completions": ("POST", "/v1/chat/completions"),
    "completions": ("POST", "/v1/completions"),
}


def test_every_v1_route_is_in_the_walk() -> None:
    from agents import openai_urls

    assert {p.name for p in openai_urls.urlpatterns} == set(V1_ROUTES)


def test_charlie_sees_none_of_alices_agents_on_any_v1_route(live_server, alice, charlie, agent, fake_llm) -> None:
    key = token(charlie)
    body = {"model": "support", "messages": [{"role": "user", "content": "Hi"}], "prompt": "Hi"}
    for name, (method, path) in V1_ROUTES.items():
        response = request(method, live_server.url + path, body if method == "POST" else None, key)
        if name == "models":
            assert response.status_code == 200 and response.json()["data"] == []
        else:
            assert assert_openai_error(response, 404)["code"] == "model_not_found", name
    assert fake_llm.calls == []


# --- chats become conversations ----------------------------------------------------------------


def test_a_chat_is_logged_only_when_the_agent_logs_chats(live_server, alice, agent, fake_llm) -> None:
    ask(sdk(live_server, alice), "Not kept")
    assert not Conversation.objects.exists()
    Agent.objects.filter(pk=agent.pk).update(log_chats=True)
    refund = material(agent, "How do I get a refund for my order?", "Open Billing and press Refund.")
    client = sdk(live_server, alice)
    first = ask(client, "How does a refund work?").choices[0].message.content
    history = [{"role": "user", "content": "How does a refund work?"}, {"role": "assistant", "content": first}]
    second = client.chat.completions.create(
        model="support", messages=[*history, {"role": "user", "content": "And for a gift?"}]
    ).choices[0].message.content
    [conversation] = Conversation.objects.all()  # the chat continued: one conversation, not one per turn
    assert conversation.workspace == agent.workspace and conversation.owner == alice
    assert conversation.source_format == "agent-api" and conversation.title == "Support: How does a refund work?"
    rows = list(conversation.messages.order_by("position"))
    assert [(m.role, m.content) for m in rows] == [
        ("user", "How does a refund work?"), ("assistant", first), ("user", "And for a gift?"), ("assistant", second),
    ]  # fmt: skip
    assert rows[1].material == [refund.pk] and rows[0].material is None
    ask(client, "A new chat")
    assert Conversation.objects.count() == 2


def test_a_logged_chat_trains(live_server, alice, agent, fake_llm) -> None:
    from training.models import TrainingJob
    from training.services import job_create
    from training.tests.test_generation import run_job

    Agent.objects.filter(pk=agent.pk).update(log_chats=True)
    client = sdk(live_server, alice)
    ask(client, "Can I change the delivery address of order 12 to 1 Main St? Mail me at ann@example.com")
    [conversation] = Conversation.objects.all()
    job = job_create(
        owner=alice, count=1, agents=[agent], conversations=[conversation], style=TrainingJob.Style.MINE, redact=True
    )
    run_job(job)
    assert job.status == TrainingJob.Status.COMPLETED and job.completions.count() == 1
    prompt = fake_llm.calls[-1]["prompt"]
    assert "delivery address of order 12" in prompt and "ann@example.com" not in prompt


def test_playground_chats_are_logged_too(alice, agent, fake_llm) -> None:
    from django.test import Client

    Agent.objects.filter(pk=agent.pk).update(log_chats=True)
    client = Client()
    client.force_login(alice)
    url = f"/agents/{agent.pk}/playground/stream/"
    response = client.post(url, data=json.dumps({"message": "Hello"}), content_type="application/json")
    b"".join(response.streaming_content)
    [conversation] = Conversation.objects.all()
    assert conversation.source_format == "agent-playground"
    assert list(Message.objects.filter(conversation=conversation).values_list("role", flat=True)) == [
        "user", "assistant"
    ]  # fmt: skip
