"""The model door's plain data: configuration, parameters, pairs, usage and replies.

No behaviour beyond validation of the values themselves, and no ``openai`` here: these are the
dataclasses every caller builds or receives, and the request a pair-generation call is made of.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

MODES = ("chat", "completion")
SOURCE_KINDS = ("document", "conversation")
# synthesize: new pairs about the source; mine: the questions the user really asked.
STYLES = ("synthesize", "mine")


@dataclass(frozen=True)
class LLMConfig:
    base_url: str
    # repr=False: configs end up in logs and tracebacks; the key must not.
    api_key: str = field(repr=False)
    model: str
    mode: str = "chat"  # "chat" | "completion"
    timeout: float = 60.0
    max_retries: int = 0
    # Put the requested count in the JSON schema as minItems/maxItems. Local servers
    # (llama.cpp, vLLM) turn the schema into a grammar, so a small model then writes
    # exactly N pairs; OpenAI's strict mode may refuse these keywords, so off by default.
    schema_counts: bool = False

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(
                f"LLMConfig.mode must be one of {MODES}, not {self.mode!r}"
            )


@dataclass(frozen=True)
class GenParams:
    model: str = ""  # empty = config.model
    temperature: float | None = None
    top_p: float | None = None
    max_tokens: int | None = None
    frequency_penalty: float | None = None
    stop: tuple[str, ...] = ()


DEFAULT_PARAMS = GenParams()


@dataclass(frozen=True)
class Pair:
    question: str
    answer: str
    evidence: str


@dataclass(frozen=True)
class Usage:
    prompt_tokens: int = 0
    completion_tokens: int = 0


@dataclass(frozen=True)
class Reply:
    pairs: list[Pair]
    finish_reason: str
    usage: Usage
    parse_error: str | None
    raw_text: str
    model: str
    # Response headers (lower-case names), e.g. the provider's x-ratelimit-* limits.
    headers: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Guidance:
    """What a job says about the pairs beyond the source and the count: the kind of question,
    who asks it and how hard, the prompt template and the style examples.

    ``question_type`` is a key of ``prompts.QUESTION_TYPE_RULES``; ``template_system`` and
    ``template_user`` are a prompt template's texts ("" = the built-in prompt); ``examples``
    are (question, answer, evidence) pairs shown as examples of style.
    """

    question_type: str = "factual"
    audience: str = ""
    difficulty: str = ""
    template_system: str = ""
    template_user: str = ""
    examples: tuple[tuple[str, str, str], ...] = ()


DEFAULT_GUIDANCE = Guidance()


@dataclass(frozen=True)
class PairRequest:
    """One pair-generation request, validated, its untrusted texts neutralised (see ``pair_request``)."""

    source: str
    style: str
    count: int
    existing_questions: tuple[str, ...]
    instructions: str
    params: GenParams
    feedback: str
    kind: str
    model: str
    schema_counts: bool = False
    # Leading characters of ``source`` that repeat the end of the previous chunk.
    overlap_chars: int = 0
    guidance: Guidance = DEFAULT_GUIDANCE


@dataclass(frozen=True)
class ChatDelta:
    """A piece of a streamed reply.

    Every item but the last carries text; the last carries ``finish_reason``
    (and ``usage`` when the server reported it) and usually no text.
    """

    text: str = ""
    finish_reason: str | None = None
    usage: Usage | None = None
    model: str = ""

    @property
    def is_final(self) -> bool:
        return self.finish_reason is not None


@dataclass(frozen=True)
class ChatReply:
    text: str
    finish_reason: str
    usage: Usage
    model: str
