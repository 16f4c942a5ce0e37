"""Playground pages: chat with an agent; the reply streams as server-sent events.

Events of ``playground_stream`` (each ``event: NAME`` + ``data: JSON``):

* ``delta`` ``{"text": "..."}`` — the next piece of the reply, as the model sends it, less our
  prompt markup (``agents.reply_filter``);
* ``used`` ``{"completions": [{"id", "question", "rule", "score"}]}`` — the approved
  completions that were in the agent's context;
* ``done`` ``{"finish_reason", "model", "usage"}`` — the end of the reply;
* ``error`` ``{"message", "retry", "retry_after"}`` — the model call failed, or the model is
  busy (shared rate limit) and ``retry_after`` seconds is when to try again, or no text of the
  reply was left to show (``playground.NoAnswer``); the stream ends there.
"""
from __future__ import annotations

import json
import logging
import re
from collections.abc import Iterator
from dataclasses import asdict
from typing import Any

from django.contrib.auth.decorators import login_required
from django.http import HttpRequest, HttpResponse, JsonResponse, StreamingHttpResponse
from django.shortcuts import get_object_or_404, render
from django.views.decorators.http import require_GET, require_POST

from masscer.lib import jsonsafe, llm
from workspaces.selectors import visible_to

from .models import Agent
from .playground import (
    MAX_MESSAGE_CHARS,
    Turn,
    agent_params,
    history_messages,
    material_summary,
    turn_prepare,
    turn_stream,
)

logger = logging.getLogger(__name__)

_TAG_SEPARATORS = re.compile(r"[,\n]")


def _agent_for(request: HttpRequest, pk: int) -> Agent:
    return get_object_or_404(visible_to(Agent.objects.all(), user=request.user), pk=pk)


@login_required
@require_GET
def playground(request: HttpRequest, pk: int) -> HttpResponse:
    agent = _agent_for(request, pk)
    context = {
        "agent": agent,
        "model": agent_params(agent).model,
        "summary": material_summary(agent),
        "max_history": history_messages(),
        "max_message_chars": MAX_MESSAGE_CHARS,
    }
    return render(request, "agents/playground.html", context)


@login_required
@require_POST
def playground_stream(request: HttpRequest, pk: int) -> HttpResponse:
    agent = _agent_for(request, pk)
    try:
        message, history, tags = _turn_input(request)
        turn = turn_prepare(agent, message=message, history=history, tags=tags, user=request.user)
    except ValueError as exc:
        return JsonResponse({"error": str(exc)}, status=400)
    response = StreamingHttpResponse(sse_events(turn), content_type="text/event-stream")
    response["Cache-Control"] = "no-cache"
    # Proxies such as nginx would otherwise buffer the whole reply.
    response["X-Accel-Buffering"] = "no"
    return response


def _turn_input(request: HttpRequest) -> tuple[str, Any, list[str]]:
    """(message, history, tags) from a JSON body or a form (history as JSON, tags comma-separated)."""
    if request.content_type == "application/json":
        data = jsonsafe.loads(request.body or b"{}", what="The request body")
        if not isinstance(data, dict):
            raise ValueError("The request body must be a JSON object.")
        message, history, tags = data.get("message", ""), data.get("history", []), data.get("tags", [])
    else:
        history = jsonsafe.loads(request.POST.get("history") or "[]", what="The history")
        message, tags = request.POST.get("message", ""), request.POST.get("tags", "")
    if not isinstance(message, str):
        raise ValueError("The message must be text.")
    if isinstance(tags, str):
        tags = _TAG_SEPARATORS.split(tags)
    if not isinstance(tags, list):
        raise ValueError("The tags must be a list or a comma-separated text.")
    return message, history, [str(t).strip() for t in tags if str(t).strip()]


def sse(event: str, data: Any) -> bytes:
    # json.dumps escapes line breaks, so the payload is always one data line.
    return f"event: {event}\ndata: {json.dumps(data, ensure_ascii=False)}\n\n".encode()


def sse_events(turn: Turn) -> Iterator[bytes]:
    deltas = turn_stream(turn)
    final: llm.ChatDelta | None = None
    try:
        for delta in deltas:
            if delta.is_final:
                final = delta
            elif delta.text:
                yield sse("delta", {"text": delta.text})
    except llm.LLMError as exc:
        retry_after = exc.retry_after if isinstance(exc, llm.LLMTransientError) else None
        retry = isinstance(exc, llm.LLMTransientError)
        yield sse("error", {"message": str(exc), "retry": retry, "retry_after": retry_after})
        return
    except Exception:
        # Headers are sent already: a 500 is impossible, a readable event is not.
        logger.exception("Playground stream failed")
        yield sse("error", {"message": "The reply failed because of an internal error.", "retry": False})
        return
    finally:
        close = getattr(deltas, "close", None)
        if callable(close):
            close()
    yield sse("used", {"completions": [_used(item) for item in turn.used]})
    yield sse("done", _done(final))


def _used(item: Any) -> dict[str, Any]:
    return {"id": item.completion_id, "question": item.question, "rule": item.rule, "score": item.score}


def _done(final: llm.ChatDelta | None) -> dict[str, Any]:
    if final is None:
        return {"finish_reason": "stop", "model": "", "usage": None}
    usage = asdict(final.usage) if final.usage is not None else None
    return {"finish_reason": final.finish_reason, "model": final.model, "usage": usage}
