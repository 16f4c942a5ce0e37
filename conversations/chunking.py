"""Cut a conversation into token-bounded chunks of whole turns.

A turn is a user question with everything that answers it (assistant replies, tool calls and
tool results), so a chunk never separates a question from its answer unless the turn alone
exceeds the budget; then it is cut between messages, and a single message too long for any
chunk is split at paragraph/sentence/word boundaries. The leading system prompt is repeated
(truncated if long) at the top of every chunk because it frames every answer. Tool results
are kept: they hold the facts the answers were built on.

A chunk's locator (first, last) is the range of message positions whose text it carries; the
repeated system prompt and the overlap context line are context, not part of the range.
"""
from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from masscer.lib.tokens import count_tokens, split_text

from .models import Conversation
from .selectors import conversation_messages

MIN_BUDGET = 32
CONTINUED = "[{role}, continued] "
CONTEXT = "[previous user] "
ELLIPSIS = " …"
TURN_SEPARATOR = "\n\n"
MESSAGE_SEPARATOR = "\n"


class MessageLike(Protocol):
    position: int
    role: str
    content: str
    name: str
    tool_calls: Any
    tool_call_id: str


@dataclass(frozen=True)
class ConvChunkSpec:
    index: int
    text: str
    token_count: int
    first: int  # position of the first message in the chunk
    last: int  # position of the last message in the chunk


@dataclass(frozen=True)
class _Block:
    """One rendered message (or one piece of a split message)."""

    position: int
    role: str
    text: str
    body: str  # the message text without its label, for the overlap context line
    tokens: int
    piece: bool = False


@dataclass
class _Group:
    """The blocks of one turn that sit in the current chunk."""

    turn: int
    blocks: list[_Block]

    def render(self) -> str:
        return MESSAGE_SEPARATOR.join(block.text for block in self.blocks)


# --------------------------------------------------------------------------- entry points


def conversation_chunk_specs(
    conversation: Conversation,
    *,
    budget: int,
    overlap: int = 0,
    redact: Callable[[str], str] | None = None,
) -> list[ConvChunkSpec]:
    """The conversation's chunks, each at most `budget` tokens (count_tokens of its text).

    The leading system prompt tops every chunk, cut to at most budget // 4 tokens. With
    `overlap` > 0, a chunk that follows earlier messages starts with the last user message
    before it as a "[previous user] ..." line when that line is at most `overlap` tokens
    (overlap is capped at budget // 4). `redact` is applied to every message text and tool
    call argument before rendering. Raises ValueError for a budget under MIN_BUDGET.
    """
    messages = list(conversation_messages(conversation=conversation))
    return message_chunk_specs(messages, budget=budget, overlap=overlap, redact=redact)


def message_chunk_specs(
    messages: Sequence[MessageLike],
    *,
    budget: int,
    overlap: int = 0,
    redact: Callable[[str], str] | None = None,
) -> list[ConvChunkSpec]:
    """Chunks of messages given in order (the pure core of conversation_chunk_specs)."""
    if budget < MIN_BUDGET:
        raise ValueError(f"budget must be at least {MIN_BUDGET} tokens")
    if overlap < 0:
        raise ValueError("overlap must not be negative")
    blocks = _blocks(messages, redact)
    header_blocks, turns = _turns(blocks)
    header = _truncate(MESSAGE_SEPARATOR.join(block.text for block in header_blocks), budget // 4)
    packer = _Packer(budget=budget, header=header, overlap=min(overlap, budget // 4))
    for number, turn in enumerate(turns):
        packer.add_turn(number, turn)
    return packer.finish()


# --------------------------------------------------------------------------- rendering


def _blocks(messages: Sequence[MessageLike], redact: Callable[[str], str] | None) -> list[_Block]:
    names: dict[str, str] = {}
    blocks: list[_Block] = []
    for message in messages:
        names.update(_call_names(message))
        body = _clean(message.content, redact)
        text = _render(message, body, names, redact)
        if text:
            blocks.append(_Block(message.position, message.role, text, body, count_tokens(text)))
    return blocks


def _clean(text: str, redact: Callable[[str], str] | None) -> str:
    return (redact(text) if redact else text).strip()


def _render(message: MessageLike, body: str, names: dict[str, str], redact: Callable[[str], str] | None) -> str:
    if message.role == "assistant" and message.tool_calls:
        lines = [f"[assistant] {body}"] if body and not _is_raw_call(body) else []
        lines += [_render_call(call, redact) for call in message.tool_calls if isinstance(call, dict)]
        return MESSAGE_SEPARATOR.join(lines)
    if not body:
        return ""
    if message.role == "tool":
        name = message.name or names.get(message.tool_call_id, "")
        return f"[tool {name}] {body}" if name else f"[tool] {body}"
    return f"[{message.role}] {body}"


def _render_call(call: dict[str, Any], redact: Callable[[str], str] | None) -> str:
    function = call["function"] if isinstance(call.get("function"), dict) else call
    name = function.get("name") or "tool"
    arguments = function.get("arguments", "")
    if not isinstance(arguments, str):
        arguments = json.dumps(arguments, ensure_ascii=False)
    return f"[assistant → tool call {name}({_clean(arguments, redact)})]"


def _call_names(message: MessageLike) -> dict[str, str]:
    """Function names by tool call id, so a tool result without a name can still say whose it is."""
    names: dict[str, str] = {}
    for call in message.tool_calls or []:
        if not isinstance(call, dict):
            continue
        function = call["function"] if isinstance(call.get("function"), dict) else call
        if isinstance(call.get("id"), str) and isinstance(function.get("name"), str):
            names[call["id"]] = function["name"]
    return names


def _is_raw_call(body: str) -> bool:
    """ShareGPT keeps a function call's JSON as the content too; rendering it twice wastes budget."""
    if not body.startswith(("{", "[")):
        return False
    try:
        json.loads(body)
    except json.JSONDecodeError:
        return False
    return True


def _turns(blocks: list[_Block]) -> tuple[list[_Block], list[list[_Block]]]:
    """(leading system blocks, turns): a turn starts at a user message that follows an answer."""
    start = 0
    while start < len(blocks) and blocks[start].role == "system":
        start += 1
    header, rest = blocks[:start], blocks[start:]
    if not rest:  # only a system prompt: it is the content, not the context
        return [], [header] if header else []
    turns: list[list[_Block]] = []
    for block in rest:
        answered = bool(turns) and any(other.role != "user" for other in turns[-1])
        if not turns or (block.role == "user" and answered):
            turns.append([])
        turns[-1].append(block)
    return header, turns


def _truncate(text: str, cap: int) -> str:
    """`text` cut to at most `cap` tokens (with an ellipsis when cut); "" if nothing fits."""
    if not text or count_tokens(text) <= cap:
        return text
    room = cap - count_tokens(ELLIPSIS) - 1
    while room >= 4:
        candidate = split_text(text, budget=room)[0].rstrip() + ELLIPSIS
        if count_tokens(candidate) <= cap:
            return candidate
        room -= 1
    return ""


# --------------------------------------------------------------------------- packing


@dataclass
class _Packer:
    budget: int
    header: str
    overlap: int
    specs: list[ConvChunkSpec] = field(default_factory=list)
    groups: list[_Group] = field(default_factory=list)
    context: str = ""
    text: str = ""
    tokens: int = 0
    last_user: _Block | None = None  # the latest whole user message placed so far

    def add_turn(self, number: int, turn: list[_Block]) -> None:
        group = _Group(number, list(turn))
        if self._place(group) or (self._flush() and self._place(group)):
            self._note(turn)
            return
        for block in turn:  # the turn alone is over budget: place it message by message
            self._add_block(number, block)
            self._note([block])

    def finish(self) -> list[ConvChunkSpec]:
        self._flush()
        return self.specs

    # -- placing

    def _add_block(self, number: int, block: _Block) -> None:
        if self._extend(number, block):
            return
        if self._fits_alone(block):
            self._flush()
            self._place(_Group(number, [block]))
            return
        # Too long for any chunk: start it in the room left here (a question keeps the start
        # of its answer), then continue in chunks of its own.
        rest = self._add_head(number, block)
        self._flush()
        for piece in self._pieces(block, rest, continued=rest != block.text):
            if not self._extend(number, piece):
                self._flush()
                if not self._place(_Group(number, [piece])):
                    raise RuntimeError(f"a piece of message {block.position} does not fit in {self.budget} tokens")

    def _add_head(self, number: int, block: _Block) -> str:
        """Put the start of `block` in the current chunk if it has room; return what is left."""
        room = self.budget - self.tokens - 4
        if not self.groups or room < max(8, self.budget // 8):
            return block.text
        head = split_text(block.text, budget=room)[0]
        if self._extend(number, self._piece(block, head.rstrip())):
            return block.text[len(head):]
        return block.text

    def _extend(self, number: int, block: _Block) -> bool:
        """Add the block to the chunk, inside its turn's group when that group is already here."""
        if not self.groups:
            return self._place(_Group(number, [block]))
        last = self.groups[-1]
        if last.turn == number:
            return self._try([*self.groups[:-1], _Group(number, [*last.blocks, block])], self.context, [block])
        return self._try([*self.groups, _Group(number, [block])], self.context, [block])

    def _place(self, group: _Group) -> bool:
        if self.groups:
            return self._try([*self.groups, group], self.context, group.blocks)
        context = self._context_line()
        return (bool(context) and self._try([group], context, group.blocks)) or self._try([group], "", group.blocks)

    def _try(self, groups: list[_Group], context: str, added: list[_Block]) -> bool:
        """Make `groups` the chunk if its text fits the budget; `added` are the new blocks."""
        estimate = self.tokens + sum(block.tokens for block in added)
        if self.groups and estimate > self.budget + 2 * len(added) + 4:
            return False  # clearly too big: skip encoding it (a separator merges at most a token or two)
        text = self._assemble(groups, context)
        tokens = count_tokens(text)
        if tokens > self.budget:
            return False
        self.groups, self.context, self.text, self.tokens = groups, context, text, tokens
        return True

    def _assemble(self, groups: list[_Group], context: str) -> str:
        parts = [self.header, context, *(group.render() for group in groups)]
        return TURN_SEPARATOR.join(part for part in parts if part)

    def _flush(self) -> bool:
        """Close the current chunk (if any); True so it can sit in an `and` chain."""
        if self.groups:
            first, last = self.groups[0].blocks[0], self.groups[-1].blocks[-1]
            self.specs.append(ConvChunkSpec(len(self.specs), self.text, self.tokens, first.position, last.position))
        self.groups, self.context, self.text, self.tokens = [], "", "", 0
        return True

    def _note(self, blocks: list[_Block]) -> None:
        for block in blocks:
            if block.role == "user" and not block.piece:
                self.last_user = block

    def _context_line(self) -> str:
        """The question the chunk's first message follows up on, if it fits the overlap."""
        if not self.overlap or self.last_user is None:
            return ""
        line = CONTEXT + self.last_user.body
        return line if count_tokens(line) <= self.overlap else ""

    # -- splitting one message

    def _pieces(self, block: _Block, text: str, *, continued: bool) -> list[_Block]:
        """`text` (all or the rest of the block) cut into pieces that each fit an empty chunk."""
        prefix = CONTINUED.format(role=block.role)
        # Room for the header and the context line too, so every piece's chunk can carry both.
        context = self._context_line()
        fixed = self._assemble([], context)
        room = self.budget - (count_tokens(fixed + TURN_SEPARATOR) if fixed else 0) - count_tokens(prefix) - 2
        while room >= 4:
            texts = [piece.strip() for piece in split_text(text, budget=room) if piece.strip()]
            pieces = [
                self._piece(block, piece if index == 0 and not continued else prefix + piece)
                for index, piece in enumerate(texts)
            ]
            if all(self._fits_alone(piece, context) for piece in pieces):
                return pieces
            room -= max(1, room // 20)
        raise RuntimeError(f"message {block.position} cannot be split to fit {self.budget} tokens")

    def _piece(self, block: _Block, text: str) -> _Block:
        return _Block(block.position, block.role, text, block.body, count_tokens(text), piece=True)

    def _fits_alone(self, block: _Block, context: str = "") -> bool:
        return count_tokens(self._assemble([_Group(-1, [block])], context)) <= self.budget
