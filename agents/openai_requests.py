"""The requests of the OpenAI-compatible endpoint (``/v1``), checked: every problem is an
``ApiError`` (a 4xx in OpenAI's error shape), never an exception further down.

What is read: ``model`` (an agent, see ``agent_for_model``), ``messages`` (system, user,
assistant and tool roles; text content or a list of text parts) or, for the legacy
``/v1/completions``, ``prompt``; the sampling parameters ``temperature``, ``top_p``,
``max_tokens`` (or ``max_completion_tokens``), ``stop``, ``frequency_penalty`` (the agent's own
where absent); ``stream`` and ``stream_options.include_usage``; ``metadata.tags`` (the
conversation tags of the agent's "include by tag" context rule). Other OpenAI parameters are
ignored, except those whose silent loss would mislead: ``n`` other than 1 and tool definitions.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from django.db.models import QuerySet

from masscer.lib import llm

from .models import Agent

MAX_MESSAGES = 1000
MAX_TEXT_CHARS = 400_000  # all the texts of one request together
MAX_STOPS = 4
ROLES = ("system", "user", "assistant", "tool")
UNSUPPORTED = ("tools", "functions", "tool_choice", "function_call")


class ApiError(Exception):
    """An error answered in OpenAI's shape: {"error": {"message", "type", "param", "code"}}."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        type: str = "invalid_request_error",  # noqa: A002 - OpenAI's name for it
        param: str | None = None,
        code: str | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type, param, code
        self.retry_after = retry_after

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


def invalid(message: str, param: str | None = None, code: str | None = None) -> ApiError:
    return ApiError(400, message, param=param, code=code)


@dataclass(frozen=True)
class ChatRequest:
    model: str
    messages: list[dict[str, Any]]
    params: dict[str, Any] = field(default_factory=dict)  # GenParams fields the client set
    stream: bool = False
    include_usage: bool = False
    tags: list[str] = field(default_factory=list)


# --- models ------------------------------------------------------------------------------------


def model_ids(agents: Sequence[Agent]) -> dict[str, Agent]:
    """Each agent by its model id: its slug, or "<workspace id>/<slug>" when two share the slug."""
    counts: dict[str, int] = {}
    for agent in agents:
        counts[agent.slug] = counts.get(agent.slug, 0) + 1
    return {(a.slug if counts[a.slug] == 1 else f"{a.workspace_id}/{a.slug}"): a for a in agents}


def agent_for_model(agents: QuerySet[Agent], model: str) -> Agent:
    """The agent a model id names among those the caller sees, or 404 model_not_found."""
    workspace, _, slug = model.rpartition("/")
    found = agents.filter(slug=slug)
    if workspace:
        found = found.filter(workspace_id=int(workspace)) if workspace.isdigit() else found.none()
    matches = list(found[:2])
    if len(matches) == 1:
        return matches[0]
    if len(matches) > 1:
        ids = ", ".join(sorted(model_ids(list(agents.filter(slug=slug)))))
        raise invalid(f"More than one of your agents is called '{model}': use one of {ids}.", "model")
    raise ApiError(
        404, f"The model '{model}' does not exist or you do not have access to it.", param="model",
        code="model_not_found",
    )


# --- bodies ------------------------------------------------------------------------------------


def chat_request(data: Any) -> ChatRequest:
    body = _object(data)
    messages = _messages(body.get("messages"))
    return _request(body, messages)


def completion_request(data: Any) -> ChatRequest:
    """The legacy text completion: the prompt is the user's turn."""
    body = _object(data)
    prompt = body.get("prompt")
    if isinstance(prompt, list) and len(prompt) == 1:
        prompt = prompt[0]
    if not isinstance(prompt, str) or not prompt.strip():
        raise invalid("'prompt' must be a non-empty string (one prompt per request).", "prompt")
    if len(prompt) > MAX_TEXT_CHARS:
        raise invalid(f"The prompt is too long (at most {MAX_TEXT_CHARS} characters).", "prompt")
    return _request(body, [{"role": "user", "content": prompt}])


def _object(data: Any) -> Mapping[str, Any]:
    if not isinstance(data, Mapping):
        raise invalid("The request body must be a JSON object.")
    for name in UNSUPPORTED:
        if data.get(name):
            raise invalid(f"'{name}' is not supported: agents answer with text only.", name)
    if data.get("n") not in (None, 1):
        raise invalid("Only n=1 is supported.", "n")
    return data


def _request(body: Mapping[str, Any], messages: list[dict[str, Any]]) -> ChatRequest:
    model = body.get("model")
    if not isinstance(model, str) or not model.strip():
        raise invalid("'model' is required: the slug of one of your agents (see GET /v1/models).", "model")
    options = body.get("stream_options")
    if options is not None and not isinstance(options, Mapping):
        raise invalid("'stream_options' must be an object.", "stream_options")
    stream = body.get("stream", False)
    if not isinstance(stream, bool):
        raise invalid("'stream' must be true or false.", "stream")
    return ChatRequest(
        model=model.strip(),
        messages=messages,
        params=sampling(body),
        stream=stream,
        include_usage=bool(options and options.get("include_usage") is True),
        tags=_tags(body.get("metadata")),
    )


def _messages(value: Any) -> list[dict[str, Any]]:
    if not isinstance(value, list) or not value:
        raise invalid("'messages' must be a non-empty list.", "messages")
    if len(value) > MAX_MESSAGES:
        raise invalid(f"At most {MAX_MESSAGES} messages per request.", "messages")
    messages = [_message(index, item) for index, item in enumerate(value)]
    if sum(len(m["content"]) for m in messages) > MAX_TEXT_CHARS:
        raise invalid(f"The messages are too long (at most {MAX_TEXT_CHARS} characters).", "messages")
    if not any(m["role"] == "user" and m["content"].strip() for m in messages):
        raise invalid("The messages need at least one user message with text.", "messages")
    return messages


def _message(index: int, item: Any) -> dict[str, Any]:
    where = f"messages[{index}]"
    if not isinstance(item, Mapping):
        raise invalid(f"{where} must be an object.", where)
    role = "system" if item.get("role") == "developer" else item.get("role")
    if role not in ROLES:
        raise invalid(f"{where}.role must be one of {', '.join(ROLES)}.", f"{where}.role")
    message: dict[str, Any] = {"role": role, "content": _content(item.get("content"), f"{where}.content")}
    calls = item.get("tool_calls") if role == "assistant" else None
    if calls is not None:
        if not isinstance(calls, list) or not all(isinstance(c, Mapping) for c in calls):
            raise invalid(f"{where}.tool_calls must be a list of objects.", f"{where}.tool_calls")
        message["tool_calls"] = [dict(c) for c in calls]
    if role == "tool":
        call_id = item.get("tool_call_id")
        if not isinstance(call_id, str) or not call_id.strip() or len(call_id) > 200:
            raise invalid(f"{where}.tool_call_id is required for a tool message.", f"{where}.tool_call_id")
        message["tool_call_id"] = call_id
    if isinstance(item.get("name"), str) and item["name"].strip():
        message["name"] = item["name"][:200]
    return message


def _content(value: Any, where: str) -> str:
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    if isinstance(value, list) and all(isinstance(part, Mapping) for part in value):
        if any(part.get("type") != "text" or not isinstance(part.get("text"), str) for part in value):
            raise invalid(f"{where}: only text parts are supported.", where)
        return "".join(part["text"] for part in value)
    raise invalid(f"{where} must be a string or a list of text parts.", where)


def _number(body: Mapping[str, Any], name: str, low: float, high: float) -> float | None:
    value = body.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not low <= value <= high:
        raise invalid(f"'{name}' must be a number from {low:g} to {high:g}.", name)
    return float(value)


def sampling(body: Mapping[str, Any]) -> dict[str, Any]:
    """The GenParams fields the client set (the agent's own stand for the others)."""
    params: dict[str, Any] = {
        "temperature": _number(body, "temperature", 0, 2),
        "top_p": _number(body, "top_p", 0, 1),
        "frequency_penalty": _number(body, "frequency_penalty", -2, 2),
    }
    name = "max_completion_tokens" if body.get("max_completion_tokens") is not None else "max_tokens"
    tokens = body.get(name)
    if tokens is not None:
        if isinstance(tokens, bool) or not isinstance(tokens, int) or not 1 <= tokens <= 1_000_000:
            raise invalid(f"'{name}' must be a whole number from 1 to 1000000.", name)
        params["max_tokens"] = tokens
    params["stop"] = _stops(body.get("stop"))
    return {key: value for key, value in params.items() if value is not None}


def _stops(value: Any) -> tuple[str, ...] | None:
    if value is None:
        return None
    stops = [value] if isinstance(value, str) else value
    if not isinstance(stops, list) or not all(isinstance(s, str) and s for s in stops) or len(stops) > MAX_STOPS:
        raise invalid(f"'stop' must be a string or a list of at most {MAX_STOPS} non-empty strings.", "stop")
    return tuple(stops)


def _tags(metadata: Any) -> list[str]:
    if metadata is None:
        return []
    if not isinstance(metadata, Mapping):
        raise invalid("'metadata' must be an object.", "metadata")
    tags = metadata.get("tags", "")
    if not isinstance(tags, str):
        raise invalid("'metadata.tags' must be a comma-separated string.", "metadata")
    return [tag.strip() for tag in tags.split(",") if tag.strip()]


def gen_params(base: llm.GenParams, given: Mapping[str, Any]) -> llm.GenParams:
    """The agent's parameters with those of the request put over them."""
    return replace(base, **given)
