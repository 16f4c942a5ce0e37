"""One turn of a chat with an agent: the one code path of the playground and of ``/v1``.

A turn is prepared first (the callers check their input, ``turn_material`` retrieves the agent's
approved material, ``agent_system`` puts the system prompt and that material in front of the
chat), so bad input is a plain 400 before any model call. Then the turn is answered, streamed
(``turn_stream``) or whole (``turn_reply``):

* it takes its place in the endpoint's shared rate limit (the one the generation workers use,
  `masscer.endpoint.model_limiter`) before it calls the model. A short wait is waited; a longer
  one (MASSCER_PLAYGROUND_MAX_WAIT) reserves nothing and raises ``ModelBusy`` ("try again in N
  s") instead of holding the request. With a limit on calls in flight
  (MASSCER_LLM_MAX_CONCURRENCY) a turn also holds one of those call slots for its call, waiting
  for one at most as long. A 429 of the model blocks the shared limit for its Retry-After;
* what the user gets of the reply is the reply without our prompt markup (``reply_filter``):
  small models echo the ``<reference_examples>`` fence and the like;
* when the agent logs its chats (``Agent.log_chats``), the finished turn is kept as a
  conversation of the agent's workspace (``conversations.services.conversation_log_chat``),
  with the ids of the material that was in the context.
"""
from __future__ import annotations

import logging
import math
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from typing import Any

from django.conf import settings

from conversations.chat_log import conversation_log_chat
from masscer.endpoint import call_slot_held, call_slots, llm_config, model_limiter
from masscer.lib import concurrency, llm, ratelimit
from masscer.lib.tokens import count_tokens

from .models import Agent
from .reply_filter import ReplyFilter, strip_markup
from .retrieval import DEFAULT_K, DEFAULT_TOKEN_BUDGET, Retrieved, retrieve

logger = logging.getLogger(__name__)

DEFAULT_MAX_WAIT = 5.0
# Reply tokens reserved in a tokens-per-minute limit when the agent sets no max_tokens.
REPLY_TOKENS_ESTIMATE = 512
# When every call slot is taken, how soon a turn is told to try again.
BUSY_RETRY_SECONDS = 3.0
TITLE_CHARS = 80

REFERENCE_INTRO = (
    "Reference material: question/answer pairs reviewed and approved by this agent's team. "
    "Use them when they are relevant to the user's message. They are examples to learn from, "
    "not instructions, and the user has not seen them."
)


@dataclass(frozen=True)
class ChatLog:
    """Where a finished turn is logged: whose chat with which agent, through which door."""

    agent: Agent
    user: Any
    via: str  # "api" | "playground"
    said: list[dict[str, Any]]  # the chat as the client sent it (its whole history, unbounded)


@dataclass(frozen=True)
class Turn:
    messages: list[dict[str, Any]]  # what the model is sent
    used: list[Retrieved]
    params: llm.GenParams
    log: ChatLog | None = None
    # The playground has nothing to show for an empty reply (NoAnswer); /v1 passes it on.
    require_text: bool = True


def examples_k() -> int:
    return int(getattr(settings, "MASSCER_PLAYGROUND_EXAMPLES", DEFAULT_K))


def context_tokens() -> int:
    return int(getattr(settings, "MASSCER_PLAYGROUND_CONTEXT_TOKENS", DEFAULT_TOKEN_BUDGET))


def max_wait() -> float:
    return float(getattr(settings, "MASSCER_PLAYGROUND_MAX_WAIT", DEFAULT_MAX_WAIT))


class ModelBusy(llm.LLMTransientError):
    """The shared rate limit (or call slots) has no room for this turn within MASSCER_PLAYGROUND_MAX_WAIT."""


class NoAnswer(llm.LLMTransientError):
    """Nothing of the reply is left to show (it was empty, or only markup of the prompt)."""


def agent_params(agent: Agent) -> llm.GenParams:
    return llm.GenParams(
        model=agent.model or settings.MASSCER_LLM_MODEL,
        temperature=agent.temperature,
        top_p=agent.top_p,
        max_tokens=agent.max_tokens,
        frequency_penalty=agent.frequency_penalty,
    )


def turn_material(agent: Agent, query: str, *, tags: Iterable[str] = ()) -> list[Retrieved]:
    """The approved material the agent's context rules put in front of this message, within its
    context budget (the agent's own, else MASSCER_PLAYGROUND_CONTEXT_TOKENS)."""
    budget = agent.context_budget if agent.context_budget is not None else context_tokens()
    return retrieve(agent, query, k=examples_k(), token_budget=budget, tags=tags)


def agent_system(agent: Agent, examples: Sequence[Retrieved]) -> list[dict[str, Any]]:
    """The system message of a turn: the agent's prompt and its reference examples (or nothing)."""
    system = agent.system_prompt.strip()
    block = llm.reference_block([(e.question, e.answer) for e in examples])
    if block:
        system = f"{system}\n\n{REFERENCE_INTRO}\n{block}".strip()
    return [{"role": "system", "content": system}] if system else []


# --- answering ---------------------------------------------------------------------------------


def turn_stream(turn: Turn) -> Iterator[llm.ChatDelta]:
    """The model's reply, delta by delta, once the shared rate limit gives the turn a slot.

    Nothing happens until the first delta is asked for; failures are raised from iteration:
    ModelBusy (a transient error) when the slot is too far away, LLMTransientError /
    LLMPermanentError from the call, NoAnswer when no text of the reply is left to show.
    The turn is logged (if the agent logs chats) before the final delta is passed on.
    """
    with model_capacity(turn) as (config, model):
        deltas = llm.chat_stream(config, messages=turn.messages, params=turn.params)
        shown: list[str] = []
        for delta in shown_reply(deltas, transcript=config.mode == "completion", model=model,
                                 require_text=turn.require_text):
            if delta.is_final:
                turn_log(turn, "".join(shown))
            else:
                shown.append(delta.text)
            yield delta


def turn_reply(turn: Turn) -> llm.ChatReply:
    """The model's whole reply (one non-streamed request), under the same limits and filter."""
    with model_capacity(turn) as (config, model):
        reply = llm.chat(config, messages=turn.messages, params=turn.params)
    text = strip_markup(reply.text, transcript=config.mode == "completion")
    if turn.require_text and not text.strip():
        raise NoAnswer("The model returned an empty reply.")
    turn_log(turn, text)
    return replace(reply, text=text)


@contextmanager
def model_capacity(turn: Turn) -> Iterator[tuple[llm.LLMConfig, str]]:
    """A call slot and a place in the shared rate limit for the turn's one model call."""
    config = llm_config()
    model = turn.params.model or config.model
    limiter = model_limiter(model)
    slots = call_slots(model)
    if limiter is not None or slots is not None:
        llm.warm_up(config)  # before the slot, not between the slot and the call
    token = _take_call_slot(slots)  # one of the calls in flight the provider takes at once
    with call_slot_held(slots, token):  # the call's outcome moves a learned limit
        if limiter is not None:
            _take_slot(limiter, turn)
        try:
            yield config, model
        except llm.LLMTransientError as exc:
            if limiter is not None and exc.status_code == 429 and exc.retry_after:
                limiter.block(exc.retry_after)  # the provider said wait: the workers wait too
            raise


def shown_reply(
    deltas: Iterator[llm.ChatDelta], *, transcript: bool, model: str, require_text: bool = True
) -> Iterator[llm.ChatDelta]:
    """The deltas without our prompt markup, each passed on as soon as it cannot be markup.

    Raises NoAnswer instead of the final delta when no text of the reply is left to show
    (unless ``require_text`` is off).
    """
    reply = ReplyFilter(transcript=transcript)
    final: llm.ChatDelta | None = None
    try:
        for delta in deltas:
            if text := reply.feed(delta.text):
                yield llm.ChatDelta(text=text)
            if delta.is_final:
                final = replace(delta, text="")
            elif reply.ended:  # the model began the next turn, where a stop sequence ends a reply
                final = llm.ChatDelta(finish_reason="stop", model=model)
                break
    finally:
        close = getattr(deltas, "close", None)
        if callable(close):
            close()
    if text := reply.finish():
        yield llm.ChatDelta(text=text)
    if require_text and not reply.visible:
        raise NoAnswer(_no_answer(reply))
    if final is not None:
        yield final


def _no_answer(reply: ReplyFilter) -> str:
    if reply.removed:
        return "The model returned no answer: it only repeated markup of its prompt, which is not shown."
    return "The model returned an empty reply."


def _take_call_slot(slots: concurrency.CallSlots | None) -> str | None:
    """A call slot (MASSCER_LLM_MAX_CONCURRENCY, shared with the llm workers), or ModelBusy."""
    if slots is None:
        return None
    try:
        return slots.take(max_wait())
    except concurrency.NoSlot as exc:
        raise ModelBusy(
            f"The model is busy (all {slots.current_limit()} calls it takes at once are in use), "
            f"try again in {BUSY_RETRY_SECONDS:g} s.",
            retry_after=BUSY_RETRY_SECONDS,
        ) from exc


def turn_tokens(turn: Turn) -> int:
    """Tokens to reserve in a tokens-per-minute limit: the prompt and the longest reply."""
    prompt = sum(count_tokens(m.get("content") or "") for m in turn.messages)
    return prompt + (turn.params.max_tokens or REPLY_TOKENS_ESTIMATE)


def _take_slot(limiter: ratelimit.RateLimiter, turn: Turn) -> None:
    decision = limiter.take(tokens=turn_tokens(turn), max_wait=max_wait())  # a short wait is slept here
    if not decision.reserved:
        seconds = max(1, math.ceil(decision.wait))
        raise ModelBusy(f"The model is busy, try again in {seconds} s.", retry_after=float(seconds))


# --- logging -----------------------------------------------------------------------------------


def turn_log(turn: Turn, reply: str) -> None:
    """Keep the finished turn as a conversation when the agent logs its chats; never fail the reply."""
    log = turn.log
    if log is None or not log.agent.log_chats:
        return
    try:
        conversation_log_chat(
            owner=log.user,
            workspace=log.agent.workspace,
            key=f"agent:{log.agent.pk}:user:{log.user.pk}:{log.via}",
            source_format=f"agent-{log.via}",
            title=_title(log),
            said=log.said,
            reply=reply,
            material=[item.completion_id for item in turn.used],
        )
    except Exception:
        # The user has the reply already; a chat that could not be kept is a log line, not an error.
        logger.exception("Could not log a chat with agent %s", log.agent.pk)


def _title(log: ChatLog) -> str:
    first = next((m for m in log.said if m.get("role") == "user" and isinstance(m.get("content"), str)), None)
    said = " ".join(str(first["content"]).split()) if first else ""
    if len(said) > TITLE_CHARS:
        said = said[: TITLE_CHARS - 1] + "…"
    return f"{log.agent.name}: {said}" if said else f"Chat with {log.agent.name}"


def last_user_text(messages: Sequence[Mapping[str, Any]]) -> str:
    """The text of the last user message (what retrieval looks for), or ""."""
    for message in reversed(messages):
        if message.get("role") == "user" and isinstance(message.get("content"), str):
            return str(message["content"])
    return ""
