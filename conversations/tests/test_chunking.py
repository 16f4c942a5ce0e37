from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Any

import pytest
from django.contrib.auth.models import AbstractBaseUser
from hypothesis import given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st

from conversations.chunking import (
    ConvChunkSpec,
    conversation_chunk_specs,
    message_chunk_specs,
)
from conversations.models import Conversation
from conversations.services import conversation_create, conversations_import
from masscer.lib.redact import redact
from masscer.lib.tokens import count_tokens

from .conftest import sample

WORDS = [
    "brake", "chain", "derailleur", "saddle", "spoke", "tyre", "valve",
    "cable", "pedal", "crank", "hub", "rim", "bearing", "lever",
]


@dataclass
class Msg:
    position: int
    role: str
    content: str
    name: str = ""
    tool_calls: Any = None
    tool_call_id: str = ""


def msgs(*pairs: tuple[str, str]) -> list[Msg]:
    return [Msg(position, role, content) for position, (role, content) in enumerate(pairs)]


def words(count: int, seed: int = 0) -> str:
    return " ".join(WORDS[(seed + i * 7) % len(WORDS)] for i in range(count)) + "."


def imported(owner: AbstractBaseUser, name: str) -> list[Conversation]:
    report = conversations_import(owner=owner, data=sample(name), filename=name)
    return [Conversation.objects.get(pk=item.id) for item in report.imported]


def assert_well_formed(specs: list[ConvChunkSpec], budget: int) -> None:
    assert [spec.index for spec in specs] == list(range(len(specs)))
    for spec in specs:
        assert spec.token_count == count_tokens(spec.text) <= budget
        assert spec.first <= spec.last
    assert all(a.last <= b.first for a, b in itertools.pairwise(specs))


# --------------------------------------------------------------------------- with imported samples


@pytest.mark.django_db
def test_tool_calls_and_results_reach_the_chunk_text(alice: AbstractBaseUser) -> None:
    warranty = imported(alice, "openai-messages.jsonl")[0]

    [chunk] = conversation_chunk_specs(warranty, budget=800)

    assert '[assistant → tool call lookup_policy({"topic": "frame warranty"})]' in chunk.text
    assert "[tool lookup_policy] Frames: 5-year warranty against manufacturing defects" in chunk.text
    assert chunk.text.startswith("[system] You are the support assistant of Northwind Cycles")
    # The system prompt is context; the locator covers the conversation's turns.
    assert (chunk.first, chunk.last) == (1, 6)


@pytest.mark.django_db
def test_the_abandoned_chatgpt_branch_is_in_no_chunk(alice: AbstractBaseUser) -> None:
    [derailleur] = imported(alice, "chatgpt-export.json")

    for budget in (32, 60, 800):
        specs = conversation_chunk_specs(derailleur, budget=budget, overlap=20)
        assert_well_formed(specs, budget)
        assert not any("draft that was edited" in spec.text for spec in specs)
        assert any("What does the B-tension screw do?" in spec.text for spec in specs)


@pytest.mark.django_db
def test_a_user_turn_stays_with_its_answer(alice: AbstractBaseUser) -> None:
    tubeless = imported(alice, "openai-messages.jsonl")[1]

    # Each turn fits alone, both together do not.
    specs = conversation_chunk_specs(tubeless, budget=70)

    assert [(spec.first, spec.last) for spec in specs] == [(0, 1), (2, 3)]
    assert specs[0].text.startswith("[user] Can I run my Trail 3 wheels tubeless?\n[assistant] The Trail 3 ships")
    assert specs[1].text.startswith("[user] And how often do I top up the sealant?\n[assistant] Every 3 to 6 months")


@pytest.mark.django_db
def test_the_system_prompt_tops_every_chunk(alice: AbstractBaseUser) -> None:
    plans = imported(alice, "sharegpt.json")[0]

    specs = conversation_chunk_specs(plans, budget=60)

    assert len(specs) > 1
    assert all(spec.text.startswith("[system] You answer questions about") for spec in specs)
    assert_well_formed(specs, 60)


@pytest.mark.django_db
def test_it_chunks_a_typed_in_conversation_with_redaction(alice: AbstractBaseUser) -> None:
    conversation = conversation_create(
        owner=alice,
        messages=[
            {"role": "user", "content": "Mail the invoice to jane@example.com or call +33 6 12 34 56 78."},
            {"role": "assistant", "content": "Done, sent to jane@example.com."},
        ],
    )

    [chunk] = conversation_chunk_specs(conversation, budget=200, redact=lambda text: redact(text)[0])

    assert chunk.text == "[user] Mail the invoice to [email] or call [phone].\n[assistant] Done, sent to [email]."


# --------------------------------------------------------------------------- pure chunking


def test_a_long_system_prompt_is_truncated_and_counted_in_the_budget() -> None:
    messages = msgs(("system", words(400)), ("user", "Which brake pads?"), ("assistant", "Organic ones."))

    [chunk] = message_chunk_specs(messages, budget=100)

    header = chunk.text.split("\n\n")[0]
    assert header.startswith("[system] ") and header.endswith(" …")
    assert count_tokens(header) <= 25
    assert chunk.text.endswith("[user] Which brake pads?\n[assistant] Organic ones.")
    assert chunk.token_count <= 100


def test_a_single_over_long_message_is_split_and_keeps_its_position() -> None:
    long_answer = " ".join(f"Step {i}: {words(12, i)}" for i in range(60))
    messages = msgs(
        ("user", "How do I service a hub?"),
        ("assistant", long_answer),
        ("user", "Thanks!"),
        ("assistant", "You are welcome."),
    )

    specs = message_chunk_specs(messages, budget=120)

    assert_well_formed(specs, 120)
    assert len(specs) >= 5
    # The question keeps the start of its answer; the rest follows in chunks of its own.
    assert specs[0].text.startswith("[user] How do I service a hub?\n[assistant] Step 0:")
    assert (specs[0].first, specs[0].last) == (0, 1)
    assert all((spec.first, spec.last) == (1, 1) for spec in specs[1:-1])
    assert all(spec.text.startswith("[assistant, continued] Step ") for spec in specs[1:])
    assert (specs[-1].first, specs[-1].last) == (1, 3)
    assert specs[-1].text.endswith("[user] Thanks!\n[assistant] You are welcome.")
    joined = " ".join(spec.text for spec in specs)
    assert all(f"Step {i}:" in joined for i in range(60))  # nothing of the answer is lost


def test_continuations_of_a_split_answer_repeat_its_question_with_overlap() -> None:
    answer = " ".join(words(12, i) for i in range(40))
    messages = msgs(("user", "How do I service a hub?"), ("assistant", answer))

    specs = message_chunk_specs(messages, budget=100, overlap=20)

    assert_well_formed(specs, 100)
    assert len(specs) >= 3
    context = "[previous user] How do I service a hub?\n\n[assistant, continued] "
    assert all(spec.text.startswith(context) for spec in specs[1:])


def test_overlap_repeats_the_previous_question_when_it_fits() -> None:
    messages = msgs(
        ("user", "Do you fit mudguards?"),
        ("assistant", words(40)),
        ("user", "How much does it cost?"),
        ("assistant", words(40, 3)),
    )

    without = message_chunk_specs(messages, budget=70)
    with_overlap = message_chunk_specs(messages, budget=70, overlap=20)

    assert [(s.first, s.last) for s in with_overlap] == [(0, 1), (2, 3)] == [(s.first, s.last) for s in without]
    assert with_overlap[1].text.startswith("[previous user] Do you fit mudguards?\n\n[user] How much does it cost?")
    assert without[1].text.startswith("[user] How much does it cost?")
    assert_well_formed(with_overlap, 70)


def test_a_tool_result_without_a_name_is_labelled_by_its_call() -> None:
    call = {"id": "c9", "type": "function", "function": {"name": "get_weather", "arguments": {"city": "Paris"}}}
    messages = [
        Msg(0, "user", "Weather in Paris?"),
        Msg(1, "assistant", "", tool_calls=[call]),
        Msg(2, "tool", "Sunny, 21 C", tool_call_id="c9"),
        Msg(3, "assistant", "Sunny and 21 C."),
    ]

    [chunk] = message_chunk_specs(messages, budget=200)

    assert chunk.text == (
        "[user] Weather in Paris?\n"
        '[assistant → tool call get_weather({"city": "Paris"})]\n'
        "[tool get_weather] Sunny, 21 C\n"
        "[assistant] Sunny and 21 C."
    )


def test_a_tiny_budget_is_refused() -> None:
    with pytest.raises(ValueError, match="at least"):
        message_chunk_specs(msgs(("user", "Hi")), budget=10)


def test_no_messages_no_chunks() -> None:
    assert message_chunk_specs([], budget=100) == []


message_strategy = st.tuples(
    st.sampled_from(["user", "assistant", "tool", "system"]),
    st.integers(min_value=0, max_value=300),
    st.integers(min_value=0, max_value=50),
)


@hypothesis_settings(max_examples=40, deadline=None)
@given(
    st.lists(message_strategy, min_size=1, max_size=12),
    st.integers(min_value=32, max_value=400),
    st.integers(min_value=0, max_value=60),
)
def test_every_chunk_fits_and_every_message_is_covered(
    spec: list[tuple[str, int, int]], budget: int, overlap: int
) -> None:
    messages = [Msg(i, role, words(length, seed) if length else "") for i, (role, length, seed) in enumerate(spec)]

    specs = message_chunk_specs(messages, budget=budget, overlap=overlap)

    assert_well_formed(specs, budget)
    covered = {p for s in specs for p in range(s.first, s.last + 1)}
    # The system prompt is the run of system messages before the first other message with
    # content (empty messages are skipped); it is repeated as context, outside the locator.
    leading_system = 0
    while leading_system < len(messages) and (
        messages[leading_system].role == "system" or not messages[leading_system].content
    ):
        leading_system += 1
    only_system = leading_system == len(messages)
    expected = {m.position for m in messages if m.content and (only_system or m.position >= leading_system)}
    assert expected <= covered
