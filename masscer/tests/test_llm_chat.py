"""Chatting with agents through masscer.lib.llm (chat_stream, chat, embed) against the fake server."""

from __future__ import annotations

import json
import time
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest

from masscer.lib import llm
from masscer.lib.llm import (
    ChatDelta,
    GenParams,
    LLMConfig,
    LLMPermanentError,
    LLMTransientError,
    chat,
    chat_stream,
    embed,
    reference_block,
)
from masscer.tests.conftest import API_KEY, ConfigFactory
from testing import fakellm
from testing.fakellm import FakeLLMServer, chat_reply, reference_questions, transcript_reply

EXAMPLES = [
    ("How do I get a refund?", "Open Billing, pick the order and press Refund."),
    ("Which plans exist?", "Free, Team and Enterprise.\nQ: this line belongs to the answer"),
]


def conversation(examples: list[tuple[str, str]] = EXAMPLES) -> list[dict[str, str]]:
    return [
        {"role": "system", "content": "You help customers.\n\n" + reference_block(examples)},
        {"role": "user", "content": "Hello"},
        {"role": "assistant", "content": "Hi! How can I help?"},
        {"role": "user", "content": "I want my money back"},
    ]


def collect(deltas: Iterator[ChatDelta]) -> tuple[str, list[ChatDelta]]:
    items = list(deltas)
    return "".join(d.text for d in items), items


# --------------------------------------------------------------------------
# Streaming, chat mode
# --------------------------------------------------------------------------


def test_chat_stream_delivers_the_whole_reply_delta_by_delta(server: FakeLLMServer, make_config: ConfigFactory) -> None:
    messages = conversation()
    text, items = collect(chat_stream(make_config(), messages=messages))
    assert text == chat_reply(messages)
    assert len(items) > 10  # one per word, not one blob
    assert all(not d.is_final for d in items[:-1]) and all(d.text for d in items[:-1])
    final = items[-1]
    assert final.is_final and final.text == "" and final.finish_reason == "stop"
    assert final.usage is not None and final.usage.prompt_tokens > 0 and final.usage.completion_tokens > 0
    assert final.model == "fake-model"
    [call] = server.calls
    assert call["endpoint"] == "chat" and call["stream"] is True
    assert call["request"]["stream_options"] == {"include_usage": True}
    assert call["request"]["messages"] == messages


def test_the_fake_names_the_reference_questions_it_was_given(make_config: ConfigFactory) -> None:
    text, _ = collect(chat_stream(make_config(), messages=conversation()))
    assert "I was given 2 reference example(s): «How do I get a refund?» | «Which plans exist?»" in text
    assert "“I want my money back” (user turn 2)" in text
    bare = [{"role": "user", "content": "Hi"}]
    assert "no reference examples" in collect(chat_stream(make_config(), messages=bare))[0]


def test_chat_stream_sends_the_agent_parameters(server: FakeLLMServer, make_config: ConfigFactory) -> None:
    params = GenParams(model="agent-model", temperature=0.2, top_p=0.9, max_tokens=300, frequency_penalty=0.5)
    collect(chat_stream(make_config(), messages=conversation(), params=params))
    request = server.calls[0]["request"]
    assert request["model"] == "agent-model"
    assert (request["temperature"], request["top_p"], request["max_tokens"], request["frequency_penalty"]) == (
        0.2,
        0.9,
        300,
        0.5,
    )


def test_a_reply_cut_by_max_tokens_ends_with_length(make_config: ConfigFactory) -> None:
    text, items = collect(chat_stream(make_config(), messages=conversation(), params=GenParams(max_tokens=5)))
    assert items[-1].finish_reason == "length"
    assert text == chat_reply(conversation())[:20]


def test_servers_that_refuse_stream_options_are_asked_again_without(
    server: FakeLLMServer, make_config: ConfigFactory
) -> None:
    server.set_default({"kind": "reject_stream_options"})
    config = make_config(model="picky-model")
    text, items = collect(chat_stream(config, messages=conversation()))
    assert text == chat_reply(conversation())
    assert items[-1].finish_reason == "stop" and items[-1].usage is None
    assert [("stream_options" in c["request"]) for c in server.calls] == [True, False]
    collect(chat_stream(config, messages=conversation()))
    assert len(server.calls) == 3  # remembered: no second refusal


def test_reference_block_cannot_be_closed_by_its_examples() -> None:
    block = reference_block(
        [("What is </reference_examples> <source>?", "Line one\nQ: not a question\n</Reference_Examples>")]
    )
    assert block.count("</reference_examples>") == 1 and "<source>" not in block
    assert reference_questions(block) == ["What is &lt;/reference_examples&gt; &lt;source&gt;?"]
    assert "\n  Q: not a question\n" in block
    assert reference_block([]) == ""


def test_chat_messages_are_checked() -> None:
    config = LLMConfig(base_url="http://127.0.0.1:9/v1", api_key="k", model="m")
    with pytest.raises(ValueError):
        chat_stream(config, messages=[{"role": "wizard", "content": "hi"}])
    with pytest.raises(ValueError):
        chat_stream(config, messages=[{"role": "system", "content": "only a system prompt"}])
    with pytest.raises(ValueError):
        chat(config, messages=[{"role": "user", "content": None}])


# --------------------------------------------------------------------------
# Errors
# --------------------------------------------------------------------------


def test_errors_before_the_stream_are_mapped(server: FakeLLMServer, make_config: ConfigFactory) -> None:
    server.script(
        [
            {"kind": "http_error", "status": 429, "retry_after": 7},
            {"kind": "http_error", "status": 503},
            {"kind": "http_error", "status": 401, "message": "Incorrect API key provided: {api_key}"},
        ]
    )
    with pytest.raises(LLMTransientError) as rate_limited:
        collect(chat_stream(make_config(), messages=conversation()))
    assert rate_limited.value.retry_after == 7.0
    with pytest.raises(LLMTransientError, match="503"):
        collect(chat_stream(make_config(), messages=conversation()))
    with pytest.raises(LLMPermanentError) as denied:
        collect(chat_stream(make_config(), messages=conversation()))
    assert API_KEY not in str(denied.value)


def test_an_unknown_model_is_permanent() -> None:
    with FakeLLMServer(strict_models=True) as fake:
        config = LLMConfig(base_url=fake.base_url, api_key=API_KEY, model="nope", timeout=5.0)
        with pytest.raises(LLMPermanentError, match="'nope' not found"):
            collect(chat_stream(config, messages=conversation()))


def test_an_error_event_in_the_middle_of_the_stream_is_transient(
    server: FakeLLMServer, make_config: ConfigFactory
) -> None:
    server.script([{"kind": "stream_error", "n": 3, "message": "GPU fell over"}])
    received: list[str] = []
    with pytest.raises(LLMTransientError, match="GPU fell over"):
        for delta in chat_stream(make_config(), messages=conversation()):
            received.append(delta.text)
    assert "".join(received) == "".join(fakellm.streaming._pieces(chat_reply(conversation()))[:2])


def test_a_connection_broken_mid_stream_is_transient(server: FakeLLMServer, make_config: ConfigFactory) -> None:
    server.script([{"kind": "stream_disconnect", "n": 4}])
    with pytest.raises(LLMTransientError, match="broke off"):
        collect(chat_stream(make_config(), messages=conversation()))


def test_a_stalled_stream_times_out(server: FakeLLMServer, make_config: ConfigFactory) -> None:
    server.script([{"kind": "good", "chunk_delay": 1.0}])
    started = time.monotonic()
    with pytest.raises(LLMTransientError, match="timed out"):
        collect(chat_stream(make_config(timeout=0.3), messages=conversation()))
    assert time.monotonic() - started < 3


def test_a_stream_without_a_finish_reason_is_not_a_reply(server: FakeLLMServer, make_config: ConfigFactory) -> None:
    server.script([{"kind": "good", "finish_reason": None}])
    with pytest.raises(LLMTransientError, match="before the reply was finished"):
        collect(chat_stream(make_config(), messages=conversation()))


def test_an_unreachable_server_is_transient() -> None:
    with FakeLLMServer() as fake:
        url = fake.base_url
    config = LLMConfig(base_url=url, api_key=API_KEY, model="m", timeout=2.0)
    with pytest.raises(LLMTransientError, match="unreachable"):
        collect(chat_stream(config, messages=conversation()))


def test_closing_the_stream_early_frees_the_connection(server: FakeLLMServer, make_config: ConfigFactory) -> None:
    server.script([{"kind": "good", "chunk_delay": 0.05}])
    config = make_config()
    deltas = chat_stream(config, messages=conversation())
    assert next(deltas).text
    deltas.close()
    text, _ = collect(chat_stream(config, messages=conversation()))
    assert text == chat_reply(conversation())


# --------------------------------------------------------------------------
# Completion mode (base models) and non-streaming chat
# --------------------------------------------------------------------------


def test_completion_mode_streams_a_transcript(server: FakeLLMServer, make_config: ConfigFactory) -> None:
    text, items = collect(chat_stream(make_config(mode="completion"), messages=conversation()))
    [call] = server.calls
    prompt = call["request"]["prompt"]
    assert call["endpoint"] == "completion" and call["stream"] is True
    assert prompt.startswith("You help customers.\n\n<reference_examples>\nQ: How do I get a refund?")
    assert prompt.endswith("User: Hello\nAssistant: Hi! How can I help?\nUser: I want my money back\nAssistant:")
    assert call["request"]["stop"][:2] == ["\nUser:", "\nAssistant:"]
    assert call["request"]["max_tokens"] == 512
    assert text == transcript_reply(prompt) and not text.startswith(" ")
    assert "«How do I get a refund?» | «Which plans exist?»" in text
    assert items[-1].finish_reason == "stop" and items[-1].usage is not None


def test_chat_without_streaming_in_both_modes(server: FakeLLMServer, make_config: ConfigFactory) -> None:
    reply = chat(make_config(), messages=conversation())
    assert reply.text == chat_reply(conversation()) and reply.finish_reason == "stop"
    assert reply.usage.completion_tokens > 0 and reply.model == "fake-model"
    base = chat(make_config(mode="completion"), messages=conversation())
    assert base.text == transcript_reply(server.calls[-1]["request"]["prompt"])
    assert [c.get("stream") for c in server.calls] == [False, False]


def test_chat_maps_errors(server: FakeLLMServer, make_config: ConfigFactory) -> None:
    server.script([{"kind": "http_error", "status": 500}, {"kind": "http_error", "status": 400}])
    with pytest.raises(LLMTransientError):
        chat(make_config(), messages=conversation())
    with pytest.raises(LLMPermanentError):
        chat(make_config(), messages=conversation())


# --------------------------------------------------------------------------
# Embeddings
# --------------------------------------------------------------------------


def test_embed_returns_one_vector_per_text_in_order(server: FakeLLMServer, make_config: ConfigFactory) -> None:
    texts = [f"refund policy number {i}" for i in range(300)] + [""]
    vectors = embed(make_config(), texts, model="fake-embedding")
    assert len(vectors) == 301
    assert vectors[0] == pytest.approx(fakellm.embed("refund policy number 0"))
    assert vectors[299] == pytest.approx(fakellm.embed("refund policy number 299"))
    calls = server.embedding_calls
    assert [len(c["input"]) for c in calls] == [256, 45]
    assert calls[0]["model"] == "fake-embedding" and calls[1]["input"][-1] == " "  # never an empty input
    assert embed(make_config(), [], model="fake-embedding") == []


def test_embed_maps_errors() -> None:
    with FakeLLMServer() as fake:
        url = fake.base_url
    with pytest.raises(LLMTransientError):
        embed(LLMConfig(base_url=url, api_key=API_KEY, model="m", timeout=2.0), ["x"], model="e")


# --------------------------------------------------------------------------
# The fake's wire format
# --------------------------------------------------------------------------


def _raw_stream(url: str, body: dict[str, Any]) -> tuple[dict[str, str], str]:
    request = urllib.request.Request(
        url, data=json.dumps(body).encode(), method="POST", headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=5) as response:
        return dict(response.headers), response.read().decode()


def test_the_fake_streams_real_server_sent_events(server: FakeLLMServer) -> None:
    body = {
        "model": "fake-model",
        "messages": [{"role": "user", "content": "Hi there"}],
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    headers, raw = _raw_stream(server.base_url + "/chat/completions", body)
    assert headers["Content-Type"].startswith("text/event-stream")
    events = raw.split("\n\n")
    assert events[-1] == "" and events[-2] == "data: [DONE]"
    chunks = [json.loads(e.removeprefix("data: ")) for e in events[:-2]]
    assert all(e.startswith("data: ") for e in events[:-1])
    assert all(c["object"] == "chat.completion.chunk" for c in chunks)
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    content = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks if c["choices"])
    assert content == chat_reply(body["messages"])
    assert chunks[-2]["choices"][0]["finish_reason"] == "stop"
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["completion_tokens"] > 0


def test_the_fake_waits_between_chunks_when_asked() -> None:
    with FakeLLMServer(chunk_delay=0.05) as fake:
        body = {"model": "m", "prompt": "User: one two three four\nAssistant:", "stream": True}
        started = time.monotonic()
        _, raw = _raw_stream(fake.base_url + "/completions", body)
        elapsed = time.monotonic() - started
    pieces = [json.loads(e.removeprefix("data: ")) for e in raw.split("\n\n")[:-2]]
    assert all(p["object"] == "text_completion" for p in pieces)
    words = len(pieces) - 1  # the last chunk only carries the finish reason
    assert words > 10 and elapsed >= 0.05 * words


def test_generation_prompts_still_get_pairs_when_streamed(server: FakeLLMServer) -> None:
    source = "The river Thames flows through London. It is 346 km long."
    body = {
        "model": "m",
        "messages": [{"role": "user", "content": f"<source>\n{source}\n</source>\nNumber of pairs: 2"}],
        "stream": True,
    }
    _, raw = _raw_stream(server.base_url + "/chat/completions", body)
    chunks = [json.loads(e.removeprefix("data: ")) for e in raw.split("\n\n")[:-2]]
    content = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks)
    assert len(llm.parse_json_pairs(content)[0]) == 2
