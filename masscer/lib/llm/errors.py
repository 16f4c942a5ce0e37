"""What a failed model call becomes: transient or permanent, with the key scrubbed out.

Every SDK error is mapped to :class:`LLMTransientError` (timeouts, unreachable
server, 429 — honouring ``Retry-After`` — 5xx, 408, 409) or :class:`LLMPermanentError`
(bad key, unknown model, other 4xx). Servers echo the API key in their messages; it is
taken out of ours and out of the SDK's error we raise ``from``.
"""

from __future__ import annotations

import email.utils
import json
import math
import re
import time
from collections.abc import Mapping

import openai

from .prompts import one_line
from .types import LLMConfig


class LLMError(Exception):
    """A model call failed; ``str(exc)`` is a human-readable explanation."""

    def __init__(self, message: str, *, status_code: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.status_code = status_code


class LLMTransientError(LLMError):
    """Worth retrying later (timeouts, unreachable server, 429, 5xx, 408, 409)."""

    def __init__(
        self,
        message: str,
        *,
        retry_after: float | None = None,
        status_code: int | None = None,
    ) -> None:
        super().__init__(message, status_code=status_code)
        self.retry_after = retry_after


class LLMPermanentError(LLMError):
    """Retrying the same request will not help (bad key, unknown model, 4xx)."""


# With lax response validation the SDK hands back (or trips over) whatever
# the server sent; a non-JSON body usually means base_url points at a web page.
SDK_PARSE_ERRORS = (AttributeError, TypeError, ValueError)


def not_openai(config: LLMConfig) -> LLMPermanentError:
    return LLMPermanentError(
        f"Model server at {config.base_url} did not answer like an "
        "OpenAI-compatible server; check base_url"
    )


# Key-shaped words: OpenAI-style keys, whole or partly masked ("sk-proj-****abcd").
_KEY_SHAPED = re.compile(r"\bsk-[A-Za-z0-9_*-]{6,}")


def redact(message: str, api_key: str) -> str:
    """The message without the key: servers echo it ("Incorrect API key provided: ..."),
    whole, partly masked, or cut in the middle by ``shorten``."""
    if api_key and len(api_key) >= 4:
        message = _without_cut_key(message.replace(api_key, "***"), api_key)
    return _KEY_SHAPED.sub("***", message)


def _without_cut_key(message: str, api_key: str) -> str:
    head, mark, tail = message.rpartition("…")
    if not mark:
        return message
    for size in range(min(len(api_key) - 1, len(head)), 3, -1):
        if head.endswith(api_key[:size]):
            return head[:-size] + "***" + mark + tail
    return message


def shorten(text: str, limit: int = 300) -> str:
    text = one_line(text)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def error_detail(exc: openai.APIStatusError) -> str:
    """The server's own error message, without the SDK's prefix."""
    body = exc.body
    if isinstance(body, Mapping):
        for key in ("message", "detail", "error"):
            value = body.get(key)
            if isinstance(value, str) and value.strip():
                return shorten(value)
            if isinstance(value, (list, dict)):
                return shorten(json.dumps(value, ensure_ascii=False))
    if isinstance(body, str) and body.strip():
        return shorten(body)
    return ""


def parse_retry_after(headers: Mapping[str, str] | None) -> float | None:
    """Seconds to wait from retry-after-ms / Retry-After (seconds or HTTP date)."""
    if not headers:
        return None
    lowered = {str(k).lower(): str(v) for k, v in headers.items()}
    for name, divisor in (("retry-after-ms", 1000.0), ("retry-after", 1.0)):
        value = lowered.get(name)
        if value is None:
            continue
        try:
            seconds = float(value) / divisor
        except ValueError:
            continue
        if math.isfinite(seconds) and seconds >= 0:
            return seconds
    date = lowered.get("retry-after")
    if date:
        try:
            parsed = email.utils.parsedate_to_datetime(date)
        except (TypeError, ValueError, IndexError):
            return None
        if parsed is not None:
            return max(0.0, parsed.timestamp() - time.time())
    return None


def connection_reason(exc: BaseException) -> str:
    chain: list[BaseException] = []
    current: BaseException | None = exc
    while current is not None and len(chain) < 10:
        chain.append(current)
        current = current.__cause__ or current.__context__
    text = " | ".join(f"{type(e).__name__}: {e}" for e in chain).lower()
    if any(isinstance(e, ConnectionRefusedError) for e in chain) or "refused" in text:
        return "connection refused"
    if (
        "name or service not known" in text
        or "nodename nor servname" in text
        or "getaddrinfo" in text
    ):
        return "host name could not be resolved"
    if (
        "disconnected" in text
        or "remoteprotocolerror" in text
        or "connection reset" in text
    ):
        return "the server closed the connection without answering"
    if "ssl" in text or "certificate" in text:
        return f"TLS error ({shorten(str(chain[-1]), 200)})"
    innermost = chain[-1]
    return shorten(str(innermost) or type(innermost).__name__, 200)


def scrub(exc: BaseException, api_key: str) -> None:
    """Take the key out of the SDK's error as well: ours is raised ``from`` it, and a traceback
    (a worker's log, Django's debug page) prints the message of every error in the chain."""
    exc.args = tuple(redact(arg, api_key) if isinstance(arg, str) else arg for arg in exc.args)
    for name in ("message", "body"):
        value = getattr(exc, name, None)
        if isinstance(value, str):
            setattr(exc, name, redact(value, api_key))
        elif isinstance(value, (Mapping, list)):
            setattr(exc, name, json.loads(redact(json.dumps(value, default=str), api_key)))


def map_error(exc: openai.OpenAIError, config: LLMConfig, model: str) -> LLMError:
    scrub(exc, config.api_key)
    error = _classify(exc, config, model)
    error.message = redact(error.message, config.api_key)
    error.args = (error.message,)
    return error


def _classify(exc: openai.OpenAIError, config: LLMConfig, model: str) -> LLMError:
    url = config.base_url
    if isinstance(exc, openai.APITimeoutError):
        return LLMTransientError(
            f"Model server at {url} did not answer within {config.timeout:g} s (timed out)"
        )
    if isinstance(exc, openai.APIConnectionError):
        return LLMTransientError(
            f"Model endpoint unreachable at {url}: {connection_reason(exc)}"
        )
    if isinstance(exc, openai.APIStatusError):
        return _classify_status(exc, config, model)
    if isinstance(exc, openai.APIResponseValidationError):
        return LLMPermanentError(
            f"Model server at {url} returned a response in an unexpected shape"
        )
    return LLMPermanentError(f"Model client error: {shorten(str(exc))}")


def _classify_status(
    exc: openai.APIStatusError, config: LLMConfig, model: str
) -> LLMError:
    return status_error(
        exc.status_code,
        error_detail(exc),
        config,
        model,
        retry_after=parse_retry_after(exc.response.headers),
        code=getattr(exc, "code", None),
    )


def status_error(
    status: int,
    detail: str,
    config: LLMConfig,
    model: str,
    *,
    retry_after: float | None = None,
    code: str | None = None,
) -> LLMError:
    """Map an HTTP status (and the server's own message) to an LLMError."""
    suffix = f": {detail}" if detail else ""
    if status == 429:
        if code == "insufficient_quota":
            return LLMPermanentError(
                f"Model provider account is out of quota (429){suffix}",
                status_code=status,
            )
        wait = f"; retry after {retry_after:.1f} s" if retry_after is not None else ""
        tail = f" — {detail}" if detail else ""
        return LLMTransientError(
            f"Model server rate limited the request (429){wait}{tail}",
            retry_after=retry_after,
            status_code=status,
        )
    if status == 408 or status == 409 or status >= 500:
        what = {408: "timed out the request", 409: "reported a conflict"}.get(
            status, "failed"
        )
        return LLMTransientError(
            f"Model server {what} ({status}){suffix}",
            retry_after=retry_after,
            status_code=status,
        )
    if status == 401:
        return LLMPermanentError(
            f"Model server rejected the API key (401){suffix}", status_code=status
        )
    if status == 403:
        return LLMPermanentError(
            f"Model server denied access (403){suffix}", status_code=status
        )
    if status == 404:
        return LLMPermanentError(
            f"Model '{model}' not found on the server at {config.base_url} (404){suffix}; "
            "check the model name and that base_url ends with /v1",
            status_code=status,
        )
    if status in (400, 422):
        return LLMPermanentError(
            f"Model server rejected the request ({status}){suffix}", status_code=status
        )
    return LLMPermanentError(
        f"Model server refused the request ({status}){suffix}", status_code=status
    )
