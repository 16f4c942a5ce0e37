"""The SDK client and the request parameters: built here and nowhere else.

One client per endpoint and credentials, cached for the process (the SDK client is
thread-safe and its HTTP pool is worth sharing); :func:`request_params` turns
:class:`GenParams` into the sampling parameters of every request the door sends.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import Any

import openai

from .errors import SDK_PARSE_ERRORS, map_error, not_openai, redact
from .types import GenParams, LLMConfig

# The SDK refuses to build a client without a key; local servers
# (llama-cpp-python, vLLM, Ollama) ignore it, so send a harmless placeholder.
_PLACEHOLDER_KEY = "no-key"

# OpenAI's APIs accept at most four stop sequences.
MAX_STOPS = 4

_ClientKey = tuple[str, str, float, int]
_clients: dict[_ClientKey, openai.OpenAI] = {}
_clients_lock = threading.Lock()


def client_for(config: LLMConfig) -> openai.OpenAI:
    # One client per endpoint/credentials so the HTTP connection pool is
    # shared by all threads of a worker (the SDK client is thread-safe).
    key: _ClientKey = (
        config.base_url,
        config.api_key,
        float(config.timeout),
        config.max_retries,
    )
    with _clients_lock:
        client = _clients.get(key)
        if client is None:
            client = openai.OpenAI(
                base_url=config.base_url,
                api_key=config.api_key or _PLACEHOLDER_KEY,
                timeout=config.timeout,
                max_retries=config.max_retries,
            )
            _clients[key] = client
        return client


def warm_up(config: LLMConfig) -> None:
    """Set up the endpoint's client (cached per process) before a call is due.

    A rate-limited caller waits for its slot and then calls at once. The client's first
    set-up (HTTP pool, the SDK's lazily loaded resources: 0.1 s, more on a busy machine)
    would otherwise fall between the two, and the first calls of a worker would reach the
    provider late and bunched together.
    """
    client = client_for(config)
    _ = client.completions if config.mode == "completion" else client.chat.completions


def check_endpoint(config: LLMConfig) -> str | None:
    """Return None when the endpoint answers GET /models, else the problem."""
    client = client_for(config)
    try:
        page = client.models.list(timeout=config.timeout)
    except openai.NotFoundError:
        # Here a 404 is about the path, not the model: usually a base_url
        # without the /v1 suffix.
        return redact(
            f"Model server at {config.base_url} has no /models endpoint (404); "
            "check that base_url ends with /v1",
            config.api_key,
        )
    except openai.OpenAIError as exc:
        return str(map_error(exc, config, config.model))
    except SDK_PARSE_ERRORS:
        return not_openai(config).message
    data = getattr(page, "data", None)
    if not isinstance(data, list):
        return not_openai(config).message
    ids = [str(getattr(model, "id", "")) for model in data]
    if ids and not _model_listed(config.model, ids):
        shown = ", ".join(ids[:10]) + (", ..." if len(ids) > 10 else "")
        return f"Model '{config.model}' is not offered by the server at {config.base_url} (available: {shown})"
    return None


def _model_listed(model: str, ids: Sequence[str]) -> bool:
    # Ollama lists "name:latest" and llama-cpp-python may list a file path.
    candidates = {model, f"{model}:latest"}
    return any(i in candidates or i.rsplit("/", 1)[-1] == model for i in ids)


def model_for(config: LLMConfig, params: GenParams) -> str:
    """The model a request names: the parameters' own, else the endpoint's."""
    return params.model or config.model


def format_key(config: LLMConfig, model: str) -> tuple[str, str]:
    """What a server's refusals are remembered by: (base_url, model)."""
    return (config.base_url.rstrip("/"), model)


def request_params(
    params: GenParams,
    *,
    max_tokens: int | None = None,
    stops_first: Sequence[str] = (),
    stop_limit: int | None = MAX_STOPS,
) -> dict[str, Any]:
    """The sampling parameters of one request, named as the APIs name them; unset ones left out.

    ``max_tokens`` is the budget sent when ``params`` sets none (the Completions API
    defaults to 16 tokens). The user's stop sequences are sent as given; with
    ``stops_first`` (our own, needed by the prompt format) they follow ours, without
    duplicates or empty ones. ``stop_limit`` caps the list (None: no cap).
    """
    values: dict[str, Any] = {
        "temperature": params.temperature,
        "top_p": params.top_p,
        "max_tokens": params.max_tokens if params.max_tokens is not None else max_tokens,
        "frequency_penalty": params.frequency_penalty,
    }
    kwargs = {name: value for name, value in values.items() if value is not None}
    stops = _merged_stops(stops_first, params.stop) if stops_first else list(params.stop)
    if stops:
        kwargs["stop"] = stops[:stop_limit]
    return kwargs


def _merged_stops(ours: Sequence[str], theirs: Sequence[str]) -> list[str]:
    stops: list[str] = []
    for stop in (*ours, *theirs):
        if stop and stop not in stops:
            stops.append(stop)
    return stops
