"""What the playground shows of a model's reply: the reply without our prompt markup.

Small models echo the prompt they were given: the fence tags around the reference examples
(``<reference_examples>``, see ``masscer.lib.llm.reference_block``), those of the generation
prompts (``<source>``, ``<existing_questions>``), the HTML-escaped forms the door writes for tags
inside untrusted text (``&lt;reference_examples&gt;``) and, for base models, the ``User:`` /
``Assistant:`` labels of the transcript. None of that is part of an answer.

The filter works on a stream. A tag can arrive split over deltas ("<refer" + "ence_examples>"),
so text is held back only while it could still turn into markup (and spaces at the start of a
line, which nobody sees anyway); everything else is passed on at once. A line holding nothing
but tags disappears with its line break; a tag inside a line is cut out of it. Text that only
looks like markup ("a < b", "<div>", "<sources>") passes untouched. A tag never spans lines.

In a transcript (completion mode) a line starting with a role label is the model writing the
next turn, which is where the stop sequences the door sends end a reply; servers that ignore
stop sequences get the same cut here. An ``Assistant:`` before any text is an echo of the
prompt's last line and is dropped.
"""
from __future__ import annotations

import re

from masscer.lib.llm.prompts import ASSISTANT_LABEL, EXISTING_TAG, REFERENCE_TAG, SOURCE_TAG, USER_LABEL

# The fence tags of masscer.lib.llm's prompts, in any case, with spaces inside the brackets.
FENCE_NAMES = (REFERENCE_TAG, SOURCE_TAG, EXISTING_TAG)
_BRACKETS = (("<", ">"), ("&lt;", "&gt;"))
_S = r"[^\S\n]*"  # horizontal whitespace only
_TAG = re.compile(
    "|".join(
        rf"{re.escape(opener)}{_S}/?{_S}(?:{'|'.join(FENCE_NAMES)}){_S}{re.escape(closer)}"
        for opener, closer in _BRACKETS
    ),
    re.IGNORECASE,
)
_SPACE = re.compile(_S)
_SPECIAL = re.compile(r"[<&\n]")
# The labels of masscer.lib.llm's transcript; case-sensitive like the stop sequences it sends.
ROLE_LABELS = (USER_LABEL, ASSISTANT_LABEL)
REPLY_LABEL = ASSISTANT_LABEL


def strip_markup(text: str, *, transcript: bool = False) -> str:
    """A whole (non-streamed) reply without our prompt markup."""
    reply = ReplyFilter(transcript=transcript)
    return reply.feed(text) + reply.finish()


def could_become_tag(text: str) -> bool:
    """Whether ``text`` (which starts at a "<" or "&") may still turn into a fence tag."""
    low = text.lower()
    for opener, closer in _BRACKETS:
        if opener.startswith(low):
            return True
        if low.startswith(opener) and _could_finish(low[len(opener) :], closer):
            return True
    return False


def _could_finish(rest: str, closer: str) -> bool:
    rest = _skip_space(rest)
    if rest.startswith("/"):
        rest = _skip_space(rest[1:])
    for name in FENCE_NAMES:
        if name.startswith(rest):
            return True
        if rest.startswith(name) and closer.startswith(_skip_space(rest[len(name) :])):
            return True
    return False


def _space_end(text: str) -> int:
    """Where the horizontal whitespace at the start of ``text`` ends."""
    match = _SPACE.match(text)
    return match.end() if match else 0


def _skip_space(text: str) -> str:
    return text[_space_end(text) :]


class ReplyFilter:
    """Feed it the deltas of a reply; it returns what may be shown now. ``finish()`` at the end."""

    def __init__(self, *, transcript: bool = False) -> None:
        self.transcript = transcript
        self.text = ""  # everything shown so far
        self.removed = False  # some markup was taken out
        self.ended = False  # a transcript label began the next turn: the rest is not the reply
        self._pending = ""
        self._line_shown = False  # this line has shown text, not only spaces and markup
        self._line_marked = False  # this line had markup before any text
        self._squeeze = False  # a tag was cut out after a space: drop the spaces that follow it

    @property
    def visible(self) -> bool:
        return bool(self.text.strip())

    def feed(self, text: str) -> str:
        self._pending += text
        return self._drain(final=False)

    def finish(self) -> str:
        """The text still held back, now that nothing more will come."""
        return self._drain(final=True)

    def _drain(self, *, final: bool) -> str:
        shown = len(self.text)
        buf = self._pending
        while buf and not self.ended:
            step = self._in_line if self._line_shown else self._at_line_start
            piece, buf, hold = step(buf, final)
            self.text += piece
            if hold:
                break
        self._pending = "" if self.ended else buf
        return self.text[shown:]

    def _new_line(self) -> None:
        self._line_shown = self._line_marked = self._squeeze = False

    def _at_line_start(self, buf: str, final: bool) -> tuple[str, str, bool]:
        """(shown, rest, hold) while the line has shown nothing: its spaces wait for its first text."""
        space = _space_end(buf)
        rest = buf[space:]
        if not rest:
            return ("" if self._line_marked else buf, "", False) if final else ("", buf, True)
        if rest[0] == "\n":  # a line of markup goes with its line break; a blank line stays
            blank = "" if self._line_marked else buf[: space + 1]
            self._new_line()
            return blank, rest[1:], False
        tag = _TAG.match(rest)
        if tag:
            self._line_marked = self.removed = True
            return "", rest[tag.end() :], False
        label = self._label(rest) if self.transcript else None
        if label is not None:
            return label
        if not final and self._could_become_markup(rest):
            return "", buf, True
        self._line_shown = True
        return ("" if self._line_marked else buf[:space]), rest, False

    def _label(self, rest: str) -> tuple[str, str, bool] | None:
        """(shown, rest, hold) for a role label of the transcript at the start of a line, or None."""
        label = next((lb for lb in ROLE_LABELS if rest.startswith(lb)), None)
        if label is None:
            return None
        self.removed = True
        if label == REPLY_LABEL and not self.visible:  # the prompt ends with it: an echo
            self._line_marked = True
            return "", rest[len(label) :], False
        self.ended = True
        return "", "", False

    def _could_become_markup(self, rest: str) -> bool:
        if self.transcript and any(lb.startswith(rest) for lb in ROLE_LABELS):
            return True
        return could_become_tag(rest)

    def _in_line(self, buf: str, final: bool) -> tuple[str, str, bool]:
        """(shown, rest, hold) inside a line that has shown text: tags are cut out of it."""
        if self._squeeze:
            buf = _skip_space(buf)
            if not buf:
                return "", "", False
            self._squeeze = False
        special = _SPECIAL.search(buf)
        if special is None:
            return buf, "", False
        if special.start() > 0:
            return buf[: special.start()], buf[special.start() :], False
        if buf[0] == "\n":
            self._new_line()
            return "\n", buf[1:], False
        tag = _TAG.match(buf)
        if tag:
            self.removed = True
            self._squeeze = self.text[-1:].isspace()
            return "", buf[tag.end() :], False
        if not final and could_become_tag(buf):
            return "", buf, True
        return buf[0], buf[1:], False
