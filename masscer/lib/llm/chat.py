"""Chatting with an agent (the playground): a whole reply, or one streamed delta by delta.

Chat mode sends the messages to Chat Completions; completion mode (base models) sends them
as a ``User:``/``Assistant:`` transcript (see ``prompts.transcript``). A stream asks for
usage (``stream_options``) unless the server refused it once, which is remembered per
(base_url, model). Every failure, also one in the middle of a stream, is an LLMError.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import openai

from .client import client_for, format_key, model_for, request_params
from .errors import (
    SDK_PARSE_ERRORS,
    LLMError,
    LLMPermanentError,
    LLMTransientError,
    connection_reason,
    error_detail,
    map_error,
    not_openai,
    redact,
    scrub,
    shorten,
)
from .parsing import as_text, finish_reason_of, first_choice, usage_of
from .prompts import TRANSCRIPT_STOPS, transcript
from .types import DEFAULT_PARAMS, ChatDelta, ChatReply, GenParams, LLMConfig, Usage

CHAT_ROLES = ("system", "user", "assistant", "tool")

# The Completions API defaults to 16 tokens; a chat reply needs more.
_TRANSCRIPT_MAX_TOKENS = 512


def chat_stream(
    config: LLMConfig,
    *,
    messages: Sequence[Mapping[str, Any]],
    params: GenParams = DEFAULT_PARAMS,
) -> Iterator[ChatDelta]:
    """Stream a reply to ``messages`` (role/content dicts), delta by delta.

    The request is sent when iteration starts; errors (also those in the
    middle of the stream) are raised as LLMTransientError /
    LLMPermanentError.  Closing the iterator early closes the connection.
    Raises ValueError at once for malformed messages.
    """
    checked = _chat_messages(messages)
    model = model_for(config, params)
    if config.mode == "completion":
        return _stream_transcript(config, checked, params, model)
    return _stream_chat(config, checked, params, model)


def chat(
    config: LLMConfig,
    *,
    messages: Sequence[Mapping[str, Any]],
    params: GenParams = DEFAULT_PARAMS,
) -> ChatReply:
    """The whole reply to ``messages`` in one (non-streaming) request."""
    checked = _chat_messages(messages)
    model = model_for(config, params)
    client = client_for(config)
    try:
        if config.mode == "completion":
            response = client.completions.create(
                model=model, prompt=transcript(checked), **_transcript_kwargs(params)
            )
        else:
            response = client.chat.completions.create(
                model=model, messages=checked, **request_params(params)
            )
    except openai.OpenAIError as exc:
        raise map_error(exc, config, model) from exc
    except SDK_PARSE_ERRORS as exc:
        raise not_openai(config) from exc
    choice = first_choice(response, config)
    if config.mode == "completion":
        text = as_text(getattr(choice, "text", None)).strip()
    else:
        text = as_text(getattr(getattr(choice, "message", None), "content", None))
    return ChatReply(
        text=text,
        finish_reason=finish_reason_of(choice),
        usage=usage_of(getattr(response, "usage", None)),
        model=as_text(getattr(response, "model", None)) or model,
    )


def _chat_messages(messages: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """The messages as the API takes them: role and text, and the tool fields where they belong.

    A tool result needs its ``tool_call_id``; an assistant message may carry ``tool_calls``
    (then its content may be null). The transcript of completion mode keeps only the texts.
    """
    checked = [_chat_message(index, message) for index, message in enumerate(messages)]
    if not any(m["role"] == "user" for m in checked):
        raise ValueError("a chat needs at least one user message")
    return checked


def _chat_message(index: int, message: Any) -> dict[str, Any]:
    role = message.get("role") if isinstance(message, Mapping) else None
    content = message.get("content") if isinstance(message, Mapping) else None
    calls = message.get("tool_calls") if role == "assistant" else None
    if calls is not None and not (isinstance(calls, list) and all(isinstance(c, Mapping) for c in calls)):
        raise ValueError(f"message {index}: tool_calls must be a list of objects")
    if content is None and calls:
        content = ""
    if role not in CHAT_ROLES or not isinstance(content, str):
        raise ValueError(f"message {index} needs a role in {CHAT_ROLES} and a text content")
    checked: dict[str, Any] = {"role": str(role), "content": content}
    if calls:
        checked["tool_calls"] = [dict(c) for c in calls]
    if role == "tool":
        call_id = message.get("tool_call_id")
        if not isinstance(call_id, str) or not call_id:
            raise ValueError(f"message {index}: a tool message needs the tool_call_id it answers")
        checked["tool_call_id"] = call_id
    name = message.get("name")
    if isinstance(name, str) and name:
        checked["name"] = name
    return checked


def _transcript_kwargs(params: GenParams) -> dict[str, Any]:
    # A reply needs a budget, and our stops keep a base model from writing the user's turn.
    return request_params(params, max_tokens=_TRANSCRIPT_MAX_TOKENS, stops_first=TRANSCRIPT_STOPS)


# --------------------------------------------------------------------------
# Streaming
# --------------------------------------------------------------------------

# (base_url, model) pairs whose server refused stream_options.
_no_stream_usage: set[tuple[str, str]] = set()
_stream_usage_lock = threading.Lock()


def _rejects_stream_options(exc: openai.APIStatusError) -> bool:
    if exc.status_code not in (400, 422):
        return False
    if getattr(exc, "param", None) == "stream_options":
        return True
    text = f"{error_detail(exc)} {exc.message}".lower()
    return "stream_options" in text or "include_usage" in text


def _open_stream(
    config: LLMConfig, model: str, create: Any, **kwargs: Any
) -> Any:
    """Start a streaming request, asking for usage unless the server refuses it."""
    key = format_key(config, model)
    with _stream_usage_lock:
        include_usage = key not in _no_stream_usage
    while True:
        extra = {"stream_options": {"include_usage": True}} if include_usage else {}
        try:
            return create(model=model, stream=True, **kwargs, **extra)
        except openai.APIStatusError as exc:
            if include_usage and _rejects_stream_options(exc):
                with _stream_usage_lock:
                    _no_stream_usage.add(key)
                include_usage = False
                continue
            raise map_error(exc, config, model) from exc
        except openai.OpenAIError as exc:
            raise map_error(exc, config, model) from exc
        except SDK_PARSE_ERRORS as exc:
            raise not_openai(config) from exc


def _stream_failure(exc: openai.APIError, config: LLMConfig) -> LLMError:
    """An error event inside an accepted stream."""
    scrub(exc, config.api_key)
    body = exc.body if isinstance(exc.body, Mapping) else {}
    message = redact(
        f"Model server reported an error while streaming: {shorten(exc.message)}",
        config.api_key,
    )
    if body.get("type") == "invalid_request_error":
        return LLMPermanentError(message)
    return LLMTransientError(message)


def _chunks(stream: Any, config: LLMConfig, model: str) -> Iterator[Any]:
    """The stream's chunks, with every failure mapped to an LLMError."""
    iterator = iter(stream)
    while True:
        try:
            chunk = next(iterator)
        except StopIteration:
            return
        except openai.APITimeoutError as exc:
            raise LLMTransientError(
                f"Model server at {config.base_url} stopped sending the reply "
                f"for more than {config.timeout:g} s (timed out)"
            ) from exc
        except openai.APIConnectionError as exc:
            raise LLMTransientError(
                f"Model server at {config.base_url} broke off the reply: {connection_reason(exc)}"
            ) from exc
        except openai.APIStatusError as exc:
            raise map_error(exc, config, model) from exc
        except openai.APIResponseValidationError as exc:
            raise map_error(exc, config, model) from exc
        except openai.APIError as exc:
            raise _stream_failure(exc, config) from exc
        except openai.OpenAIError as exc:
            raise map_error(exc, config, model) from exc
        except SDK_PARSE_ERRORS as exc:
            raise not_openai(config) from exc
        yield chunk


def _relay(
    stream: Any, config: LLMConfig, model: str, text_of: Any
) -> Iterator[ChatDelta]:
    finish: str | None = None
    usage: Usage | None = None
    reported = ""
    try:
        for chunk in _chunks(stream, config, model):
            reported = reported or as_text(getattr(chunk, "model", None))
            if getattr(chunk, "usage", None) is not None:
                usage = usage_of(chunk.usage)
            choices = getattr(chunk, "choices", None) or []
            if not choices:
                continue  # the usage chunk has no choices
            text = text_of(choices[0])
            if text:
                yield ChatDelta(text=text)
            reason = getattr(choices[0], "finish_reason", None)
            if reason:
                finish = str(reason)
    finally:
        close = getattr(stream, "close", None)
        if callable(close):
            close()
    if finish is None:
        # Every OpenAI-compatible server ends a reply with a finish reason; a
        # stream without one was cut off, which must not pass for a reply.
        raise LLMTransientError(
            f"Model server at {config.base_url} ended the stream before the reply was finished"
        )
    yield ChatDelta(finish_reason=finish, usage=usage, model=reported or model)


def _delta_content(choice: Any) -> str:
    return as_text(getattr(getattr(choice, "delta", None), "content", None))


def _choice_text(choice: Any) -> str:
    return as_text(getattr(choice, "text", None))


def _stream_chat(
    config: LLMConfig,
    messages: list[dict[str, Any]],
    params: GenParams,
    model: str,
) -> Iterator[ChatDelta]:
    client = client_for(config)
    stream = _open_stream(
        config,
        model,
        client.chat.completions.create,
        messages=messages,
        **request_params(params),
    )
    yield from _relay(stream, config, model, _delta_content)


def _stream_transcript(
    config: LLMConfig,
    messages: list[dict[str, Any]],
    params: GenParams,
    model: str,
) -> Iterator[ChatDelta]:
    client = client_for(config)
    stream = _open_stream(
        config,
        model,
        client.completions.create,
        prompt=transcript(messages),
        **_transcript_kwargs(params),
    )
    relay = _relay(stream, config, model, _choice_text)
    started = False
    try:
        for delta in relay:
            if not started and not delta.is_final:
                # The prompt ends with "Assistant:"; the reply starts with a space.
                text = delta.text.lstrip()
                if not text:
                    continue
                delta = ChatDelta(text=text)
                started = True
            yield delta
    finally:
        relay.close()
