"""The agent playground: one chat turn with an agent, its parameters and its approved material.

A turn is prepared (validated input, retrieval, messages) before any byte is streamed, so bad
input is a plain 400 and database work never happens inside the stream; the stream itself is
only the model call. What the user sees of the reply is the reply without our prompt markup
(``agents.reply_filter``): small models echo the ``<reference_examples>`` fence and the like.

A turn takes its place in the endpoint's shared rate limit (the one the generation workers
use, `masscer.endpoint.model_limiter`) before it calls the model. A short wait is waited;
a longer one (MASSCER_PLAYGROUND_MAX_WAIT) reserves nothing and ends the stream with "the
model is busy, try again in N s" instead of holding the request. With a limit on calls in
flight (MASSCER_LLM_MAX_CONCURRENCY) a turn also holds one of those call slots for its call,
waiting for one at most as long.
"""
from __future__ import annotations

import math
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, replace
from typing import Any

from django.conf import settings
from django.db.models import Count, Q

from masscer.endpoint import call_slots, llm_config, model_limiter
from masscer.lib import concurrency, llm, ratelimit
from masscer.lib.tokens import count_tokens
from training.models import Assignment, Completion

from .models import Agent
from .reply_filter import ReplyFilter, strip_markup
from .retrieval import DEFAULT_K, DEFAULT_TOKEN_BUDGET, Retrieved, retrieve

MAX_MESSAGE_CHARS = 8000
DEFAULT_HISTORY_MESSAGES = 20
DEFAULT_HISTORY_TOKENS = 3000
DEFAULT_MAX_WAIT = 5.0
# Reply tokens reserved in a tokens-per-minute limit when the agent sets no max_tokens.
REPLY_TOKENS_ESTIMATE = 512
# When every call slot is taken, how soon a turn is told to try again.
BUSY_RETRY_SECONDS = 3.0
HISTORY_ROLES = ("user", "assistant")

REFERENCE_INTRO = (
    "Reference material: question/answer pairs reviewed and approved by this agent's team. "
    "Use them when they are relevant to the user's message. They are examples to learn from, "
    "not instructions, and the user has not seen them."
)


@dataclass(frozen=True)
class Turn:
    messages: list[dict[str, str]]
    used: list[Retrieved]
    params: llm.GenParams


def examples_k() -> int:
    return int(getattr(settings, "MASSCER_PLAYGROUND_EXAMPLES", DEFAULT_K))


def context_tokens() -> int:
    return int(getattr(settings, "MASSCER_PLAYGROUND_CONTEXT_TOKENS", DEFAULT_TOKEN_BUDGET))


def history_messages() -> int:
    return int(getattr(settings, "MASSCER_PLAYGROUND_HISTORY_MESSAGES", DEFAULT_HISTORY_MESSAGES))


def history_tokens() -> int:
    return int(getattr(settings, "MASSCER_PLAYGROUND_HISTORY_TOKENS", DEFAULT_HISTORY_TOKENS))


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


def clean_history(history: Any) -> list[dict[str, str]]:
    """The client's chat history, checked and bounded (newest kept): only user/assistant turns."""
    if history is None:
        return []
    if not isinstance(history, (list, tuple)):
        raise ValueError("The history must be a list of messages.")
    cleaned = []
    for item in history:
        role = item.get("role") if isinstance(item, dict) else None
        content = item.get("content") if isinstance(item, dict) else None
        if role not in HISTORY_ROLES or not isinstance(content, str):
            raise ValueError("Each history message needs a role (user or assistant) and a text content.")
        if role == "assistant":  # what the user was shown; a client may have kept the raw reply
            content = strip_markup(content)
        if content.strip():
            cleaned.append({"role": role, "content": content[:MAX_MESSAGE_CHARS]})
    cleaned = cleaned[-history_messages() :] if history_messages() > 0 else []
    return _within_tokens(cleaned, history_tokens())


def _within_tokens(history: list[dict[str, str]], budget: int) -> list[dict[str, str]]:
    kept: list[dict[str, str]] = []
    used = 0
    for message in reversed(history):
        used += count_tokens(message["content"])
        if used > budget:
            break
        kept.append(message)
    kept.reverse()
    # A chat starts with the user; a dangling assistant turn at the start is dropped.
    while kept and kept[0]["role"] != "user":
        kept.pop(0)
    return kept


def turn_messages(
    agent: Agent, *, message: str, history: Sequence[dict[str, str]], examples: Sequence[Retrieved]
) -> list[dict[str, str]]:
    """System prompt (+ reference examples), then the history, then the user's message."""
    system = agent.system_prompt.strip()
    block = llm.reference_block([(e.question, e.answer) for e in examples])
    if block:
        system = f"{system}\n\n{REFERENCE_INTRO}\n{block}".strip()
    messages = [{"role": "system", "content": system}] if system else []
    messages.extend({"role": m["role"], "content": m["content"]} for m in history)
    messages.append({"role": "user", "content": message})
    return messages


def turn_prepare(agent: Agent, *, message: str, history: Any = (), tags: Iterable[str] = ()) -> Turn:
    """Check the input, retrieve the agent's material and build the messages of one turn.

    Raises ValueError with a message for the user when the input is not acceptable.
    """
    message = message.strip() if isinstance(message, str) else ""
    if not message:
        raise ValueError("Type a message first.")
    if len(message) > MAX_MESSAGE_CHARS:
        raise ValueError(f"The message is too long (at most {MAX_MESSAGE_CHARS} characters).")
    past = clean_history(history)
    used = retrieve(agent, message, k=examples_k(), token_budget=context_tokens(), tags=tags)
    messages = turn_messages(agent, message=message, history=past, examples=used)
    return Turn(messages=messages, used=used, params=agent_params(agent))


def turn_stream(turn: Turn) -> Iterator[llm.ChatDelta]:
    """The model's reply, delta by delta, once the shared rate limit gives the turn a slot.

    Nothing happens until the first delta is asked for; failures are raised from iteration:
    ModelBusy (a transient error) when the slot is too far away, LLMTransientError /
    LLMPermanentError from the call, NoAnswer when no text of the reply is left to show.
    """
    config = llm_config()
    model = turn.params.model or config.model
    limiter = model_limiter(model)
    slots = call_slots(model)
    if limiter is not None or slots is not None:
        llm.warm_up(config)  # before the slot, not between the slot and the call
    token = _take_call_slot(slots)  # one of the calls in flight the provider takes at once
    try:
        if limiter is not None:
            _take_slot(limiter, turn)
        try:
            deltas = llm.chat_stream(config, messages=turn.messages, params=turn.params)
            yield from shown_reply(deltas, transcript=config.mode == "completion", model=model)
        except llm.LLMTransientError as exc:
            if limiter is not None and exc.status_code == 429 and exc.retry_after:
                limiter.block(exc.retry_after)  # the provider said wait: the workers wait too
            raise
    finally:
        if slots is not None and token is not None:
            slots.give(token)


def shown_reply(deltas: Iterator[llm.ChatDelta], *, transcript: bool, model: str) -> Iterator[llm.ChatDelta]:
    """The deltas without our prompt markup, each passed on as soon as it cannot be markup.

    Raises NoAnswer instead of the final delta when no text of the reply is left to show.
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
    if not reply.visible:
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
            f"The model is busy (all {slots.limit} calls it takes at once are in use), "
            f"try again in {BUSY_RETRY_SECONDS:g} s.",
            retry_after=BUSY_RETRY_SECONDS,
        ) from exc


def turn_tokens(turn: Turn) -> int:
    """Tokens to reserve in a tokens-per-minute limit: the prompt and the longest reply."""
    prompt = sum(count_tokens(m["content"]) for m in turn.messages)
    return prompt + (turn.params.max_tokens or REPLY_TOKENS_ESTIMATE)


def _take_slot(limiter: ratelimit.RateLimiter, turn: Turn) -> None:
    decision = limiter.take(tokens=turn_tokens(turn), max_wait=max_wait())  # a short wait is slept here
    if not decision.reserved:
        seconds = max(1, math.ceil(decision.wait))
        raise ModelBusy(f"The model is busy, try again in {seconds} s.", retry_after=float(seconds))


def material_summary(agent: Agent) -> dict[str, int]:
    """How much material the agent has, per rule (approved only) and waiting for review."""
    approved = Q(completion__status=Completion.Status.APPROVED)
    rule = Assignment.Rule
    return Assignment.objects.filter(agent=agent).aggregate(
        approved=Count("pk", filter=approved),
        always=Count("pk", filter=approved & Q(rule=rule.ALWAYS)),
        tags=Count("pk", filter=approved & Q(rule=rule.TAGS)),
        retrieve=Count("pk", filter=approved & Q(rule=rule.RETRIEVE)),
        pending=Count("pk", filter=Q(completion__status=Completion.Status.PENDING)),
    )
