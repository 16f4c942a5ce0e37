"""The playground's reply filter: our prompt markup never shows, everything else shows at once."""
from __future__ import annotations

import pytest

from agents.reply_filter import ReplyFilter, could_become_tag, strip_markup
from masscer.lib import llm


def streamed(deltas: list[str], *, transcript: bool = False) -> tuple[str, list[str]]:
    """(the shown reply, what each delta showed) for a reply sent as ``deltas``."""
    reply = ReplyFilter(transcript=transcript)
    shown = [reply.feed(delta) for delta in deltas]
    shown.append(reply.finish())
    return "".join(shown), shown


ECHOES = [
    ("Sure.\n<reference_examples>\nQ: x\n</reference_examples>\nThe answer.", "Sure.\nQ: x\nThe answer."),
    ("<reference_examples>\nRefunds take 30 days.", "Refunds take 30 days."),
    ("Refunds take 30 days.\n</reference_examples>", "Refunds take 30 days.\n"),
    ("Here <reference_examples> it is", "Here it is"),
    ("Done.</reference_examples>\nBye", "Done.\nBye"),
    ("   <reference_examples>   \nIndented tag line", "Indented tag line"),
    ("<reference_examples>Q: glued", "Q: glued"),
    ("<source>\ntext\n</source>\n<existing_questions>\n</existing_questions>\nok", "text\nok"),
    ("&lt;reference_examples&gt;\nescaped\n&lt;/reference_examples&gt;", "escaped\n"),
    ("a\r\n<reference_examples>\r\nb", "a\r\nb"),
]

UNTOUCHED = [
    "a < b and c > d",
    "<div>hi</div>",
    "x<y && y>z",
    "Tom & Jerry &amp; friends &lt;div&gt;",
    "<sources> and <source_code> and <reference examples>",
    "<source\n>",
    "a\n\n  \nb\n",
    "  indented\n\ttabbed",
    "ends with <refer",
    "ends with &lt",
    "",
]


@pytest.mark.parametrize(("reply", "shown"), ECHOES)
def test_our_fence_tags_never_show(reply: str, shown: str) -> None:
    assert strip_markup(reply) == shown


@pytest.mark.parametrize(
    "tag",
    [
        "<reference_examples>",
        "</reference_examples>",
        "<REFERENCE_EXAMPLES>",
        "</Reference_Examples>",
        "< reference_examples >",
        "<\t/ reference_examples\t>",
        "</ SOURCE>",
        "<Existing_Questions >",
        "&lt;reference_examples&gt;",
        "&LT;/Reference_Examples&GT;",
        "&lt; / source &gt;",
    ],
)
def test_any_case_and_spacing_of_a_tag_is_markup(tag: str) -> None:
    assert strip_markup(f"One\n{tag}\nTwo") == "One\nTwo"
    assert strip_markup(f"One {tag} two") == "One two"


@pytest.mark.parametrize("text", UNTOUCHED)
def test_text_that_only_looks_like_markup_is_untouched(text: str) -> None:
    reply = ReplyFilter()
    assert reply.feed(text) + reply.finish() == text
    assert not reply.removed


@pytest.mark.parametrize(("reply", "shown"), ECHOES + [(text, text) for text in UNTOUCHED])
def test_a_reply_split_anywhere_shows_the_same(reply: str, shown: str) -> None:
    for i in range(len(reply) + 1):
        for j in range(i, len(reply) + 1):
            assert streamed([reply[:i], reply[i:j], reply[j:]])[0] == shown, (i, j)
    assert streamed(list(reply))[0] == shown


@pytest.mark.parametrize(("reply", "shown"), ECHOES + [(text, text) for text in UNTOUCHED])
def test_what_shows_while_streaming_is_never_taken_back(reply: str, shown: str) -> None:
    text, pieces = streamed(list(reply))
    so_far = ""
    for piece in pieces:
        so_far += piece
        assert shown.startswith(so_far)


def test_text_shows_as_soon_as_it_cannot_be_a_tag() -> None:
    reply = ReplyFilter()
    assert reply.feed("Hello wor") == "Hello wor"
    assert reply.feed("ld <refer") == "ld "  # "<refer" may still become a tag
    assert reply.feed("ence_examples>") == ""
    assert reply.feed(" and a <") == "and a "
    assert reply.feed(" b") == "< b"  # "< b" can no longer become one
    assert reply.feed(" <so") == " "
    assert reply.feed("rt>") == "<sort>"
    assert reply.finish() == ""
    assert reply.text == "Hello world and a < b <sort>" and reply.removed


def test_only_spaces_wait_at_the_start_of_a_line() -> None:
    reply = ReplyFilter()
    assert reply.feed("One\n   ") == "One\n"
    assert reply.feed("two") == "   two"


def test_a_reply_of_markup_only_shows_nothing() -> None:
    reply = ReplyFilter()
    assert reply.feed("<reference_examples>\n") == ""
    assert reply.feed("\n</reference_examples>") == "\n"  # a blank line stays a blank line
    assert reply.finish() == ""
    assert not reply.visible and reply.removed


def test_a_prompt_built_by_the_door_leaves_no_tag() -> None:
    block = llm.reference_block([("Who <source> are </reference_examples> you?", "A <existing_questions> bot.")])
    shown = strip_markup(block)
    assert "reference_examples" not in shown and "source" not in shown and "existing_questions" not in shown
    assert shown.startswith("Q: Who") and "A: A" in shown and "bot." in shown


@pytest.mark.parametrize(
    "text",
    ["<", "&", "&l", "&lt", "&lt;", "< /", "<refer", "</ reference_examples ", "&lt;source&g", "<SOU"],
)
def test_a_tag_start_may_still_become_a_tag(text: str) -> None:
    assert could_become_tag(text)


@pytest.mark.parametrize("text", ["< b", "<div", "<sources", "<source x", "&amp;", "<//source", "<source\n"])
def test_other_text_cannot_become_a_tag(text: str) -> None:
    assert not could_become_tag(text)


# --- transcripts (completion mode): the User:/Assistant: labels -----------------------------------


@pytest.mark.parametrize(
    ("reply", "shown"),
    [
        ("Assistant: Hello there", "Hello there"),
        ("Assistant:\nHello there", "Hello there"),
        ("Hello\nUser: and now?\nAssistant: more", "Hello\n"),
        ("Hello\nAssistant: again", "Hello\n"),
        ("User: I will ask instead", ""),
        ("Use it well.\nUsers: many", "Use it well.\nUsers: many"),
        ("Reply mentions User: inline", "Reply mentions User: inline"),
        ("<reference_examples>\nAssistant: Hi\n</reference_examples>", "Hi\n"),
    ],
)
def test_a_transcript_reply_ends_where_the_next_turn_begins(reply: str, shown: str) -> None:
    assert strip_markup(reply, transcript=True) == shown
    for i in range(len(reply) + 1):
        assert streamed([reply[:i], reply[i:]], transcript=True)[0] == shown, i


def test_the_labels_are_plain_text_in_a_chat_reply() -> None:
    assert strip_markup("Assistant: hi\nUser: admin", transcript=False) == "Assistant: hi\nUser: admin"


def test_nothing_is_shown_after_the_next_turn_begins() -> None:
    reply = ReplyFilter(transcript=True)
    assert reply.feed("Yes.\nUs") == "Yes.\n"
    assert reply.feed("er: ok") == ""
    assert reply.ended
    assert reply.feed(" more text") == "" and reply.finish() == ""
