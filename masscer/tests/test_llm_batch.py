"""Batch mode in masscer.lib.llm (files + batches endpoints) against the fake server."""

from __future__ import annotations

import json
import time
from typing import Any

import pytest

from masscer.lib import llm
from masscer.lib.llm import (
    BatchItem,
    GenParams,
    LLMConfig,
    LLMPermanentError,
    LLMTransientError,
    Reply,
    batch_cancel,
    batch_jsonl,
    batch_poll,
    batch_results,
    batch_submit,
    build_chat_request,
    generate_pairs,
)
from masscer.tests.conftest import API_KEY, ConfigFactory
from testing.fakellm import FakeLLMClient, FakeLLMServer

SOURCE = (
    "The river Thames flows through London. It is the longest river entirely in England, "
    "with a length of 346 km. Tower Bridge, which opened in 1894, crosses it in London. "
    "The Great Stink of 1858 led Joseph Bazalgette to build a sewer network. "
    "Photosynthesis converts light energy into chemical energy. Chlorophyll absorbs mostly "
    "blue and red light, and oxygen is released when water molecules are split."
)


def items(n: int, count: int = 3, **fields: Any) -> list[BatchItem]:
    return [BatchItem(custom_id=f"req-{k}", source=SOURCE, count=count, **fields) for k in range(n)]


def run(config: LLMConfig, requests: list[BatchItem]) -> tuple[llm.BatchState, dict[str, Reply | llm.LLMError]]:
    state = batch_poll(config, batch_submit(config, requests))
    return state, dict(batch_results(config, state))


# --------------------------------------------------------------------------
# Requests
# --------------------------------------------------------------------------


def test_a_batch_request_is_the_request_a_live_call_sends(server: FakeLLMServer, make_config: ConfigFactory) -> None:
    config = make_config()
    params = GenParams(temperature=0.2, max_tokens=900, stop=("END",))
    arguments: dict[str, Any] = {
        "source": SOURCE,
        "count": 4,
        "existing_questions": ["How long is the Thames?"],
        "instructions": "Write for engineers.",
        "params": params,
        "feedback": "Your previous reply was cut off.",
    }
    generate_pairs(config, **arguments)
    live = server.calls[0]["request"]
    assert build_chat_request(config, **arguments) == live
    line = json.loads(batch_jsonl(config, [BatchItem(custom_id="a", **arguments)]))
    assert line == {"custom_id": "a", "method": "POST", "url": "/v1/chat/completions", "body": live}
    assert line["body"]["response_format"]["type"] == "json_schema"


def test_batch_mode_is_chat_mode_only(make_config: ConfigFactory) -> None:
    config = make_config(mode="completion")
    with pytest.raises(ValueError, match="chat mode"):
        batch_submit(config, items(1))
    with pytest.raises(ValueError, match="chat mode"):
        batch_poll(config, "batch_x")


def test_custom_ids_must_be_unique(make_config: ConfigFactory) -> None:
    with pytest.raises(ValueError, match="custom_id"):
        batch_jsonl(make_config(), [items(1)[0], items(1)[0]])
    with pytest.raises(ValueError, match="at least one"):
        batch_jsonl(make_config(), [])


# --------------------------------------------------------------------------
# Round trip
# --------------------------------------------------------------------------


def test_results_are_parsed_like_live_replies(server: FakeLLMServer, make_config: ConfigFactory) -> None:
    server.script(
        [
            {"kind": "good"},
            {"kind": "short", "n": 1},
            {"kind": "invalid_json"},
            {"kind": "length", "n": 1},
            {"kind": "bad_evidence", "n": 1},
        ]
    )
    config = make_config()
    state, results = run(config, items(5))
    assert state.status == "completed" and state.done
    assert state.request_counts == {"total": 5, "completed": 5, "failed": 0}
    assert state.output_file_id and state.error_file_id is None
    good, short, garbage, cut, invented = (results[f"req-{k}"] for k in range(5))
    assert isinstance(good, Reply) and len(good.pairs) == 3 and good.parse_error is None
    assert good.usage.prompt_tokens > 0 and good.usage.completion_tokens > 0 and good.model == "fake-model"
    assert isinstance(short, Reply) and len(short.pairs) == 1
    assert isinstance(garbage, Reply) and garbage.pairs == [] and garbage.parse_error
    assert isinstance(cut, Reply) and cut.finish_reason == "length" and len(cut.pairs) == 1
    assert isinstance(invented, Reply) and "invented by the model" in invented.pairs[0].evidence
    for pair in good.pairs:
        assert pair.evidence in SOURCE


def test_each_line_is_logged_as_a_batch_call(server: FakeLLMServer, make_config: ConfigFactory) -> None:
    server.script([{"kind": "short", "n": 2}])
    state, _ = run(make_config(), items(2, count=4))
    calls = server.calls
    assert [(c["endpoint"], c["custom_id"], c["behaviour"]) for c in calls] == [
        ("batch", "req-0", "short"),
        ("batch", "req-1", "good"),
    ]
    assert all(c["batch_id"] == state.batch_id and c["requested_count"] == 4 for c in calls)
    assert [c["pairs_returned"] for c in calls] == [2, 4]


def test_behaviours_can_target_batch_lines_only(server: FakeLLMServer, make_config: ConfigFactory) -> None:
    server.script([{"kind": "invalid_json", "endpoint": "batch"}])
    config = make_config()
    live = generate_pairs(config, source=SOURCE, count=2)
    assert live.parse_error is None
    _, results = run(config, items(1))
    assert results["req-0"].parse_error  # type: ignore[union-attr]


def test_line_errors_are_mapped_like_live_errors(server: FakeLLMServer, make_config: ConfigFactory) -> None:
    server.script(
        [
            {"kind": "http_error", "status": 500},
            {"kind": "http_error", "status": 429},
            {"kind": "http_error", "status": 401, "message": "Incorrect API key provided: {api_key}"},
            {"kind": "disconnect"},
        ]
    )
    state, results = run(make_config(), items(5))
    assert state.request_counts == {"total": 5, "completed": 1, "failed": 4}
    assert state.error_file_id is not None
    assert isinstance(results["req-0"], LLMTransientError) and results["req-0"].status_code == 500
    assert isinstance(results["req-1"], LLMTransientError) and "429" in str(results["req-1"])
    assert isinstance(results["req-2"], LLMPermanentError) and "(401)" in str(results["req-2"])
    assert API_KEY not in str(results["req-2"])
    assert isinstance(results["req-3"], LLMTransientError)
    assert isinstance(results["req-4"], Reply)


def test_a_rejected_response_format_lowers_it_for_the_next_batch(
    server: FakeLLMServer, make_config: ConfigFactory
) -> None:
    server.set_default({"kind": "reject_json_schema"})
    config = make_config()
    _, results = run(config, items(2))
    assert all(isinstance(r, LLMTransientError) for r in results.values())
    body = json.loads(batch_jsonl(config, items(1)))["body"]
    assert body["response_format"] == {"type": "json_object"}  # lowered once, not once per line
    _, again = run(config, items(2))
    assert all(isinstance(r, Reply) and len(r.pairs) == 3 for r in again.values())


# --------------------------------------------------------------------------
# Batch statuses
# --------------------------------------------------------------------------


def test_a_batch_is_in_progress_until_its_delay_has_passed(server: FakeLLMServer, make_config: ConfigFactory) -> None:
    server.configure(batch_delay=0.3)
    config = make_config()
    batch_id = batch_submit(config, items(2))
    state = batch_poll(config, batch_id)
    assert state.status == "in_progress" and not state.done and state.output_file_id is None
    assert list(batch_results(config, state)) == [] and server.calls == []
    time.sleep(0.35)
    state = batch_poll(config, batch_id)
    assert state.status == "completed" and len(dict(batch_results(config, state))) == 2


def test_a_batch_can_be_cancelled(server: FakeLLMServer, make_config: ConfigFactory) -> None:
    server.configure(batch_delay=30)
    config = make_config()
    batch_id = batch_submit(config, items(1))
    batch_cancel(config, batch_id)
    assert batch_poll(config, batch_id).status == "cancelled"
    assert server.calls == []


def test_a_scripted_failed_batch_answers_nothing(server: FakeLLMServer, make_config: ConfigFactory) -> None:
    server.script([{"kind": "batch_failed", "message": "Enqueued token limit reached", "code": "token_limit"}])
    state, results = run(make_config(), items(2))
    assert state.status == "failed" and state.done
    assert state.errors == ("Enqueued token limit reached",)
    assert results == {} and server.calls == []


def test_an_expired_batch_answers_the_first_lines_only(server: FakeLLMServer, make_config: ConfigFactory) -> None:
    server.script([{"kind": "batch_expired", "n": 1}])
    state, results = run(make_config(), items(3))
    assert state.status == "expired"
    assert state.request_counts == {"total": 3, "completed": 1, "failed": 2}
    assert isinstance(results["req-0"], Reply)
    for key in ("req-1", "req-2"):
        assert isinstance(results[key], LLMTransientError) and "batch_expired" in str(results[key])
    assert len(server.calls) == 1


def test_the_fake_validates_the_input_file(server: FakeLLMServer, make_config: ConfigFactory) -> None:
    config = make_config()
    client = llm.client.client_for(config)
    good = json.loads(batch_jsonl(config, items(1)))
    lines = [good, good, {**good, "custom_id": "other", "url": "/v1/embeddings"}, "not json"]
    data = "\n".join(line if isinstance(line, str) else json.dumps(line) for line in lines).encode()
    upload = client.files.create(file=("bad.jsonl", data, "application/jsonl"), purpose="batch")
    assert upload.purpose == "batch" and upload.bytes == len(data)
    assert client.files.retrieve(upload.id).filename == "bad.jsonl"
    assert client.files.content(upload.id).content == data
    batch = client.batches.create(
        input_file_id=upload.id, endpoint="/v1/chat/completions", completion_window="24h"
    )
    assert batch.status == "validating"
    state = batch_poll(config, batch.id)
    assert state.status == "failed"
    assert any("not unique" in e for e in state.errors)
    assert any("url must be" in e for e in state.errors)
    assert any("not parseable" in e for e in state.errors)
    assert server.calls == []


# --------------------------------------------------------------------------
# API errors
# --------------------------------------------------------------------------


def test_a_server_without_the_batches_api_is_a_permanent_error(
    server: FakeLLMServer, make_config: ConfigFactory
) -> None:
    server.script([{"kind": "http_error", "status": 404, "endpoint": "files"}])
    with pytest.raises(LLMPermanentError, match="files and batches API"):
        batch_submit(make_config(), items(1))


def test_api_errors_are_transient_or_permanent(server: FakeLLMServer, make_config: ConfigFactory) -> None:
    config = make_config()
    server.script([{"kind": "http_error", "status": 503, "endpoint": "files"}])
    with pytest.raises(LLMTransientError):
        batch_submit(config, items(1))
    server.script([{"kind": "http_error", "status": 401, "endpoint": "batches", "message": "Bad key {api_key}"}])
    with pytest.raises(LLMPermanentError) as info:
        batch_submit(config, items(1))
    assert "(401)" in str(info.value) and API_KEY not in str(info.value)
    batch_id = batch_submit(config, items(1))
    server.script([{"kind": "http_error", "status": 429, "retry_after": 7, "endpoint": "batches"}])
    with pytest.raises(LLMTransientError) as limited:
        batch_poll(config, batch_id)
    assert limited.value.retry_after == 7
    assert batch_poll(config, batch_id).status == "completed"
    with pytest.raises(LLMPermanentError, match="could not look up batch batch_unknown \\(404\\)"):
        batch_poll(config, "batch_unknown")


def test_an_unreachable_server_is_transient(make_config: ConfigFactory, server: FakeLLMServer) -> None:
    config = make_config()
    server.stop()
    with pytest.raises(LLMTransientError, match="unreachable"):
        batch_submit(config, items(1))


def test_the_batch_delay_is_a_remote_setting(server: FakeLLMServer) -> None:
    FakeLLMClient(server.base_url).configure(batch_delay=2.5)
    assert server.state()["batch_delay"] == 2.5
