"""An OpenAI-compatible endpoint for agents, mounted at ``/v1``: any OpenAI client can chat with one.

``GET /v1/models`` (and ``/v1/models/<id>``) lists the agents of the token owner's workspaces;
``POST /v1/chat/completions`` and the legacy ``POST /v1/completions`` answer as the agent named by
``model``: its system prompt and the approved material its context rules pick for the last user
message go in front of the client's messages, and the turn runs through ``agents.turns``, the
code path of the playground (shared rate limit, call slots, reply filter, chat log).

Authentication is an API token only (``Authorization: Bearer msk_...``, no session, so no CSRF).
Every error is JSON in OpenAI's shape ``{"error": {"message", "type", "param", "code"}}``: 400
invalid input, 401 no or a bad token, 404 an unknown agent (``model_not_found``, also for an agent
of another workspace), 405, 413, 429 with ``Retry-After`` when the model or the shared rate limit
is busy, 502/503 when the model fails. A stream that fails after its first byte ends with an
``error`` event, as OpenAI's do.
"""
from __future__ import annotations

import json
import logging
import math
import time
import uuid
from collections.abc import Callable, Iterator
from functools import wraps
from typing import Any

from django.core.exceptions import RequestDataTooBig
from django.http import HttpRequest, HttpResponse, JsonResponse, StreamingHttpResponse
from django.views.decorators.csrf import csrf_exempt

from masscer.lib import jsonsafe, llm
from masscer.lib.tokens import count_tokens
from workspaces.services import api_token_authenticate

from .models import Agent
from .openai_requests import (
    ApiError,
    ChatRequest,
    agent_for_model,
    chat_request,
    completion_request,
    gen_params,
    invalid,
    model_ids,
)
from .selectors import agents_for
from .turns import ChatLog, Turn, agent_params, agent_system, last_user_text, turn_material, turn_reply, turn_stream

logger = logging.getLogger(__name__)

View = Callable[..., HttpResponse]


def error_response(error: ApiError) -> JsonResponse:
    response = JsonResponse(error.body(), status=error.status)
    if error.retry_after is not None:
        response["Retry-After"] = str(max(1, math.ceil(error.retry_after)))
    if error.status == 401:
        response["WWW-Authenticate"] = 'Bearer realm="v1"'
    return response


def openai_view(*methods: str) -> Callable[[View], View]:
    """Token auth, the allowed methods, and every failure as an OpenAI-shaped error."""

    def decorate(view: View) -> View:
        @csrf_exempt
        @wraps(view)
        def wrapped(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
            try:
                if request.method not in methods:
                    raise ApiError(405, f"{request.method} is not allowed here (use {', '.join(methods)}).")
                return view(request, _token_user(request), *args, **kwargs)
            except ApiError as exc:
                return error_response(exc)
            except RequestDataTooBig:
                return error_response(ApiError(413, "The request body is over the size limit."))
            except Exception:
                logger.exception("/v1 request failed")
                return error_response(ApiError(500, "The server had an error.", type="server_error"))

        return wrapped

    return decorate


def _token_user(request: HttpRequest) -> Any:
    scheme, _, raw = request.headers.get("Authorization", "").partition(" ")
    user = api_token_authenticate(raw=raw.strip()) if scheme.lower() == "bearer" and raw.strip() else None
    if user is None:
        raise ApiError(
            401, "Missing or invalid API key: send 'Authorization: Bearer msk_...' (a token from your settings).",
            code="invalid_api_key",
        )
    return user


def _body(request: HttpRequest) -> Any:
    try:
        return jsonsafe.loads(request.body or b"", what="The request body")
    except jsonsafe.JSONInputError as exc:
        raise invalid(str(exc)) from exc


# --- models ------------------------------------------------------------------------------------


def _model(model_id: str, agent: Agent) -> dict[str, Any]:
    return {"id": model_id, "object": "model", "created": int(agent.created_at.timestamp()),
            "owned_by": agent.workspace.name}  # fmt: skip


@openai_view("GET")
def models(request: HttpRequest, user: Any) -> HttpResponse:
    agents = list(agents_for(user=user).select_related("workspace"))
    return JsonResponse({"object": "list", "data": [_model(i, a) for i, a in model_ids(agents).items()]})


@openai_view("GET")
def model_detail(request: HttpRequest, user: Any, model: str) -> HttpResponse:
    agent = agent_for_model(agents_for(user=user).select_related("workspace"), model)
    return JsonResponse(_model(model, agent))


# --- completions -------------------------------------------------------------------------------


@openai_view("POST")
def chat_completions(request: HttpRequest, user: Any) -> HttpResponse:
    return _answer(request, user, chat_request(_body(request)), kind="chat")


@openai_view("POST")
def completions(request: HttpRequest, user: Any) -> HttpResponse:
    return _answer(request, user, completion_request(_body(request)), kind="text")


def agent_turn(user: Any, agent: Agent, req: ChatRequest) -> Turn:
    """The agent's turn for the client's messages: its system prompt and material in front."""
    used = turn_material(agent, last_user_text(req.messages), tags=req.tags)
    log = ChatLog(agent=agent, user=user, via="api", said=req.messages) if agent.log_chats else None
    return Turn(
        messages=[*agent_system(agent, used), *req.messages],
        used=used,
        params=gen_params(agent_params(agent), req.params),
        log=log,
        require_text=False,
    )


def _answer(request: HttpRequest, user: Any, req: ChatRequest, *, kind: str) -> HttpResponse:
    agent = agent_for_model(agents_for(user=user), req.model)
    turn = agent_turn(user, agent, req)
    reply = Reply(kind=kind, model=req.model, turn=turn)
    if not req.stream:
        return JsonResponse(reply.whole(_called(lambda: turn_reply(turn))))
    deltas = turn_stream(turn)
    # The first piece is awaited here: a busy model or a refused call is still an HTTP error.
    first = _called(lambda: next(deltas, None))
    response = StreamingHttpResponse(reply.events(first, deltas, req.include_usage), content_type="text/event-stream")
    response["Cache-Control"] = "no-cache"
    response["X-Accel-Buffering"] = "no"
    return response


def _called(call: Callable[[], Any]) -> Any:
    try:
        return call()
    except llm.LLMError as exc:
        raise model_error(exc) from exc


def model_error(exc: llm.LLMError) -> ApiError:
    """The model's failure as the client should see it."""
    if isinstance(exc, llm.LLMTransientError):
        if exc.status_code == 429 or exc.retry_after is not None:
            return ApiError(429, str(exc), type="rate_limit_error", code="rate_limit_exceeded",
                            retry_after=exc.retry_after or 1.0)  # fmt: skip
        return ApiError(503, str(exc), type="server_error", code="model_unavailable")
    if exc.status_code in (400, 413, 422):
        return ApiError(400, str(exc), code="model_refused_request")
    return ApiError(502, str(exc), type="server_error", code="model_error")


class Reply:
    """The reply in OpenAI's shapes: a whole chat.completion / text_completion, or its chunks."""

    def __init__(self, *, kind: str, model: str, turn: Turn) -> None:
        prefix = "chatcmpl" if kind == "chat" else "cmpl"
        self.kind, self.model, self.turn = kind, model, turn
        self.id, self.created = f"{prefix}-{uuid.uuid4().hex}", int(time.time())
        self.text = ""

    def _envelope(self, obj: str, choices: list[dict[str, Any]]) -> dict[str, Any]:
        return {"id": self.id, "object": obj, "created": self.created, "model": self.model,
                "system_fingerprint": None, "choices": choices}  # fmt: skip

    def whole(self, reply: llm.ChatReply) -> dict[str, Any]:
        finish = reply.finish_reason or "stop"
        if self.kind == "chat":
            message = {"role": "assistant", "content": reply.text, "refusal": None}
            choice = {"index": 0, "message": message, "logprobs": None, "finish_reason": finish}
            body = self._envelope("chat.completion", [choice])
        else:
            choice = {"index": 0, "text": reply.text, "logprobs": None, "finish_reason": finish}
            body = self._envelope("text_completion", [choice])
        self.text = reply.text
        return body | {"usage": self.usage(reply.usage)}

    def usage(self, usage: llm.Usage | None) -> dict[str, int]:
        """The model's count; estimated (tiktoken) when the server reported none."""
        if usage is None or not (usage.prompt_tokens or usage.completion_tokens):
            prompt = sum(count_tokens(m.get("content") or "") for m in self.turn.messages)
            usage = llm.Usage(prompt_tokens=prompt, completion_tokens=count_tokens(self.text))
        total = usage.prompt_tokens + usage.completion_tokens
        return {"prompt_tokens": usage.prompt_tokens, "completion_tokens": usage.completion_tokens,
                "total_tokens": total}  # fmt: skip

    def chunk(self, text: str | None, finish: str | None, *, first: bool = False) -> dict[str, Any]:
        if self.kind == "chat":
            delta: dict[str, Any] = {"role": "assistant", "content": text or ""} if first else {}
            if text and not first:
                delta = {"content": text}
            return self._envelope("chat.completion.chunk", [{"index": 0, "delta": delta, "logprobs": None,
                                                              "finish_reason": finish}])  # fmt: skip
        choice = {"index": 0, "text": text or "", "logprobs": None, "finish_reason": finish}
        return self._envelope("text_completion", [choice])

    def events(
        self, first: llm.ChatDelta | None, deltas: Iterator[llm.ChatDelta], include_usage: bool
    ) -> Iterator[bytes]:
        extra = {"usage": None} if include_usage else {}
        final: llm.ChatDelta | None = None
        if self.kind == "chat":
            yield sse(self.chunk("", None, first=True) | extra)
        try:
            for delta in _chain(first, deltas):
                if delta.is_final:
                    final = delta
                elif delta.text:
                    self.text += delta.text
                    yield sse(self.chunk(delta.text, None) | extra)
        except Exception as exc:  # headers are sent: the failure is an event, as OpenAI's streams do
            error = model_error(exc) if isinstance(exc, llm.LLMError) else None
            if error is None:
                logger.exception("/v1 stream failed")
                error = ApiError(500, "The reply failed because of an internal error.", type="server_error")
            yield sse(error.body())
            return
        finally:
            close = getattr(deltas, "close", None)
            if callable(close):
                close()
        yield sse(self.chunk(None, final.finish_reason if final else "stop") | extra)
        if include_usage:
            yield sse(self._envelope(self._chunk_object(), []) | {"usage": self.usage(final.usage if final else None)})
        yield b"data: [DONE]\n\n"

    def _chunk_object(self) -> str:
        return "chat.completion.chunk" if self.kind == "chat" else "text_completion"


def _chain(first: llm.ChatDelta | None, rest: Iterator[llm.ChatDelta]) -> Iterator[llm.ChatDelta]:
    if first is not None:
        yield first
        yield from rest


def sse(data: Any) -> bytes:
    return f"data: {json.dumps(data, ensure_ascii=False)}\n\n".encode()
