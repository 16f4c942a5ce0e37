"""Which approved completions an agent puts into its context for a user message.

Context rules (``training.Assignment.rule``), in this order, all under one token budget (the
agent's ``context_budget``, else the server's, ``context_budget``); ``explain`` shows a choice and what
the budget left out (the agent page's "why this answer"):

1. ``always``: included in every turn;
2. ``tags``: included when the conversation carries one of the assignment's tags;
3. ``retrieve``: the ``k`` most relevant to the message, ranked by BM25 over question and
   answer (pure Python, deterministic), or by cosine similarity of embeddings from the
   endpoint's ``/v1/embeddings`` when ``settings.MASSCER_EMBEDDINGS_MODEL`` is set.

Only **approved** completions are ever candidates: the status is filtered in the query, so
pending or rejected material cannot reach a prompt, whatever is cached.

Each turn costs one query (the agent's approved assignments: ids, rules, tags and a version
per completion). The texts and the BM25 index live in memory per agent and are rebuilt (one
more query) when that version changes: a completion added, removed, approved, rejected or
edited. Edits are seen through ``reviewed_at`` (set by every review service) and the text
lengths; ``created_at`` guards against reused ids (a restored database, test rollbacks).

Embeddings are cached twice: unit float32 vectors per agent index in memory, and as bytes
in Django's cache keyed by model and text hash (so a rebuilt index or another process does
not ask the endpoint again). A cosine pass over 10,000 completions of 1536 dimensions takes
about a second in pure Python; BM25 takes milliseconds. When the embeddings endpoint fails,
the turn falls back to BM25 (logged) rather than failing, and BM25 is used for the next
minute without asking again.
"""
from __future__ import annotations

import hashlib
import logging
import math
import operator
import re
import threading
import time
from array import array
from collections import OrderedDict, defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from django.conf import settings
from django.core.cache import cache
from django.db.models.functions import Length

from masscer.endpoint import llm_config
from masscer.lib import llm
from masscer.lib.tokens import count_tokens
from training.models import Assignment, Completion

from .models import Agent

logger = logging.getLogger(__name__)

DEFAULT_K = 5
DEFAULT_TOKEN_BUDGET = 1500

# BM25 parameters (the usual ones); questions count twice, as user messages resemble them.
K1 = 1.2
B = 0.75
QUESTION_WEIGHT = 2

# Agents whose index is kept in memory (per process), least recently used dropped first.
MAX_CACHED_AGENTS = 32
EMBEDDING_CACHE_SECONDS = 30 * 24 * 3600
EMBEDDINGS_RETRY_SECONDS = 60

Rule = Assignment.Rule


@dataclass(frozen=True)
class Retrieved:
    completion_id: int
    question: str
    answer: str
    rule: str  # "always" | "tags" | "retrieve"
    tokens: int
    score: float | None = None  # BM25 score or cosine similarity; None for always/tags


def retrieve(
    agent: Agent,
    query: str,
    *,
    k: int = DEFAULT_K,
    token_budget: int | None = None,
    tags: Iterable[str] = (),
) -> list[Retrieved]:
    """The agent's approved completions for this message, in context order, within budget
    (`token_budget`, else `context_budget(agent)`)."""
    return _select(agent, query, k=k, budget=_Budget(_budget_of(agent, token_budget)), tags=tags)


@dataclass(frozen=True)
class Explanation:
    """What `retrieve` would put in context for a message, and what the budget left out."""

    picked: list[Retrieved]
    left_out: list[Retrieved]
    budget: int
    k: int

    @property
    def used(self) -> int:
        return sum(item.tokens for item in self.picked)


def explain(
    agent: Agent, query: str, *, k: int = DEFAULT_K, token_budget: int | None = None, tags: Iterable[str] = ()
) -> Explanation:
    """The "why this answer" view of retrieval: the same choice as `retrieve` (rule, score and
    tokens of each pick), plus the candidates that matched but did not fit in the budget."""
    budget = _budget_of(agent, token_budget)
    left_out: list[Retrieved] = []
    picked = _select(agent, query, k=k, budget=_Budget(budget), tags=tags, left_out=left_out)
    return Explanation(picked=picked, left_out=left_out, budget=budget, k=k)


def context_budget(agent: Agent) -> int:
    """Tokens of material the agent puts in its context per turn: its own budget, else the
    server's (MASSCER_PLAYGROUND_CONTEXT_TOKENS, default DEFAULT_TOKEN_BUDGET), as chats use."""
    if agent.context_budget is not None:
        return agent.context_budget
    return int(getattr(settings, "MASSCER_PLAYGROUND_CONTEXT_TOKENS", DEFAULT_TOKEN_BUDGET))


def _budget_of(agent: Agent, token_budget: int | None) -> int:
    return token_budget if token_budget is not None else context_budget(agent)


def _select(
    agent: Agent,
    query: str,
    *,
    k: int,
    budget: _Budget,
    tags: Iterable[str],
    left_out: list[Retrieved] | None = None,
) -> list[Retrieved]:
    rows = _candidates(agent.pk)
    if not rows:
        return []
    index = _index_for(agent.pk, rows)
    wanted = normal_tags(tags)
    always = [r.completion_id for r in rows if r.rule == Rule.ALWAYS]
    tagged = [r.completion_id for r in rows if r.rule == Rule.TAGS and wanted & normal_tags(r.tags)]
    relevant = {r.completion_id for r in rows if r.rule == Rule.RETRIEVE}
    ranked = rank(index, query, relevant)
    picked: list[Retrieved] = []
    for ids, rule in ((always, Rule.ALWAYS), (tagged, Rule.TAGS)):
        picked.extend(_fill(index, ((cid, None) for cid in ids), rule, budget, limit=None, left_out=left_out))
    picked.extend(_fill(index, ranked, Rule.RETRIEVE, budget, limit=k, left_out=left_out))
    return picked


def normal_tags(tags: Any) -> set[str]:
    """Tags compared case-insensitively, blanks ignored; a lone string counts as one tag."""
    if isinstance(tags, str):
        tags = [tags]
    if not isinstance(tags, Iterable):
        return set()
    return {str(t).strip().lower() for t in tags if str(t).strip()}


# --- candidates -------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Candidate:
    completion_id: int
    rule: str
    tags: Any
    version: tuple[Any, ...]


def _candidates(agent_id: int) -> list[_Candidate]:
    rows = (
        Assignment.objects.filter(agent_id=agent_id, completion__status=Completion.Status.APPROVED)
        .annotate(q_len=Length("completion__question"), a_len=Length("completion__answer"))
        .order_by("completion_id")
        .values_list(
            "completion_id", "rule", "tags", "completion__created_at", "completion__reviewed_at", "q_len", "a_len"
        )
    )
    return [_Candidate(cid, rule, tags, tuple(version)) for cid, rule, tags, *version in rows]


# --- the in-memory index ----------------------------------------------------------------------

_WORD = re.compile(r"\w+")
_STOPWORD_TEXT = """
a an and are as at be been but by can could did do does for from had has have he her his how
i if in into is it its me my no not of on or our she so than that the their them then there
these they this to was we were what when where which who why will with would you your
"""
_STOPWORDS = frozenset(_STOPWORD_TEXT.split())


def terms(text: str) -> list[str]:
    """Lower-cased words without stop words, with a light plural folding (refunds → refund)."""
    found = []
    for word in _WORD.findall(text.lower()):
        if word in _STOPWORDS or (len(word) < 2 and not word.isdigit()):
            continue
        if len(word) > 3 and word.endswith("s") and not word.endswith("ss"):
            word = word[:-1]
        found.append(word)
    return found


@dataclass
class _Index:
    version: tuple[Any, ...]
    ids: list[int]
    position: dict[int, int]
    texts: list[tuple[str, str]]
    lengths: array[int]
    average_length: float
    # term -> (document positions, term frequencies); arrays keep big agents small in memory.
    postings: dict[str, tuple[array[int], array[int]]]
    tokens: dict[int, int] = field(default_factory=dict)
    vectors: dict[str, dict[int, array[float]]] = field(default_factory=dict)


_indexes: OrderedDict[int, _Index] = OrderedDict()
_indexes_lock = threading.Lock()


def _index_for(agent_id: int, rows: Sequence[_Candidate]) -> _Index:
    version = tuple((r.completion_id, r.version) for r in rows)
    with _indexes_lock:
        index = _indexes.get(agent_id)
        if index is not None and index.version == version:
            _indexes.move_to_end(agent_id)
            return index
    index = _build_index(agent_id, version)
    with _indexes_lock:
        _indexes[agent_id] = index
        _indexes.move_to_end(agent_id)
        while len(_indexes) > MAX_CACHED_AGENTS:
            _indexes.popitem(last=False)
    return index


def forget_indexes() -> None:
    """Drop every cached index and embeddings outage (tests; memory pressure)."""
    with _indexes_lock:
        _indexes.clear()
    _embeddings_down_until.clear()


def _build_index(agent_id: int, version: tuple[Any, ...]) -> _Index:
    rows = (
        Completion.objects.filter(assignments__agent_id=agent_id, status=Completion.Status.APPROVED)
        .order_by("pk")
        .values_list("pk", "question", "answer")
    )
    ids: list[int] = []
    texts: list[tuple[str, str]] = []
    lengths = array("l")
    raw: dict[str, tuple[list[int], list[int]]] = defaultdict(lambda: ([], []))
    for position, (pk, question, answer) in enumerate(rows):
        ids.append(pk)
        texts.append((question, answer))
        counts: dict[str, int] = defaultdict(int)
        for term in terms(question):
            counts[term] += QUESTION_WEIGHT
        for term in terms(answer):
            counts[term] += 1
        lengths.append(sum(counts.values()))
        for term, tf in counts.items():
            raw[term][0].append(position)
            raw[term][1].append(tf)
    postings = {term: (array("l", docs), array("l", tfs)) for term, (docs, tfs) in raw.items()}
    average = (sum(lengths) / len(lengths)) if lengths else 0.0
    return _Index(
        version=version,
        ids=ids,
        position={pk: i for i, pk in enumerate(ids)},
        texts=texts,
        lengths=lengths,
        average_length=average or 1.0,
        postings=postings,
    )


# --- ranking ----------------------------------------------------------------------------------


def rank(index: _Index, query: str, allowed: set[int]) -> list[tuple[int, float]]:
    """(completion id, score) of the allowed completions that match, best first."""
    allowed = {cid for cid in allowed if cid in index.position}
    if not allowed or not query.strip():
        return []
    model = getattr(settings, "MASSCER_EMBEDDINGS_MODEL", "")
    if model and time.monotonic() >= _embeddings_down_until.get(model, 0.0):
        try:
            return _rank_by_embeddings(index, query, allowed, model)
        except llm.LLMError as exc:
            # Not asked again for a while: every turn would otherwise wait for the failure.
            _embeddings_down_until[model] = time.monotonic() + EMBEDDINGS_RETRY_SECONDS
            logger.warning("Embeddings unavailable, ranking with BM25 for %d s: %s", EMBEDDINGS_RETRY_SECONDS, exc)
    return bm25(index, query, allowed)


_embeddings_down_until: dict[str, float] = {}


def bm25(index: _Index, query: str, allowed: set[int]) -> list[tuple[int, float]]:
    total = len(index.ids)
    mask = bytearray(total)
    for cid in allowed:
        mask[index.position[cid]] = 1
    scores: dict[int, float] = defaultdict(float)
    for term in set(terms(query)):
        if term not in index.postings:
            continue
        docs, tfs = index.postings[term]
        idf = math.log(1 + (total - len(docs) + 0.5) / (len(docs) + 0.5))
        for position, tf in zip(docs, tfs, strict=True):
            if not mask[position]:
                continue
            norm = 1 - B + B * index.lengths[position] / index.average_length
            scores[position] += idf * tf * (K1 + 1) / (tf + K1 * norm)
    ranked = [(index.ids[p], score) for p, score in scores.items() if score > 0]
    ranked.sort(key=lambda item: (-item[1], item[0]))
    return ranked


def _rank_by_embeddings(index: _Index, query: str, allowed: set[int], model: str) -> list[tuple[int, float]]:
    vectors = _vectors(index, sorted(allowed), model)
    [target] = _embed_cached([query], model)
    # Unit vectors: the dot product is the cosine similarity.
    scores = [(cid, sum(map(operator.mul, target, vectors[cid]))) for cid in allowed]
    ranked = [(cid, score) for cid, score in scores if score > 0]
    ranked.sort(key=lambda item: (-item[1], item[0]))
    return ranked


def _document(question: str, answer: str) -> str:
    return f"{question}\n{answer}"


def _vectors(index: _Index, ids: list[int], model: str) -> dict[int, array[float]]:
    known = index.vectors.setdefault(model, {})
    missing = [cid for cid in ids if cid not in known]
    if missing:
        texts = [_document(*index.texts[index.position[cid]]) for cid in missing]
        known.update(zip(missing, _embed_cached(texts, model), strict=True))
    return known


def _embedding_key(model: str, text: str) -> str:
    digest = hashlib.sha256(f"{model}\0{text}".encode()).hexdigest()
    return f"masscer:embedding:{digest}"


def _unit(values: Sequence[float]) -> array[float]:
    # float32 arrays: a 1536-dimension vector takes 6 KB instead of ~50 KB as a list of floats.
    norm = math.sqrt(sum(v * v for v in values))
    return array("f", (v / norm for v in values) if norm else values)


def _embed_cached(texts: list[str], model: str) -> list[array[float]]:
    """Unit vectors from Django's cache (keyed by model and text hash), the rest from the endpoint."""
    keys = [_embedding_key(model, text) for text in texts]
    found = {key: array("f", raw) for key, raw in cache.get_many(keys).items() if isinstance(raw, bytes)}
    todo = [i for i, key in enumerate(keys) if key not in found]
    if todo:
        fresh = [_unit(v) for v in llm.embed(llm_config(), [texts[i] for i in todo], model=model)]
        new = {keys[i]: vector for i, vector in zip(todo, fresh, strict=True)}
        cache.set_many({key: vector.tobytes() for key, vector in new.items()}, timeout=EMBEDDING_CACHE_SECONDS)
        found.update(new)
    return [found[key] for key in keys]


# --- the token budget -------------------------------------------------------------------------


class _Budget:
    def __init__(self, tokens: int) -> None:
        self.left = max(0, tokens)

    def take(self, tokens: int) -> bool:
        if tokens > self.left:
            return False
        self.left -= tokens
        return True


def example_text(question: str, answer: str) -> str:
    """How an example is counted against the budget (close to how the prompt shows it)."""
    return f"Q: {question}\nA: {answer}"


def _tokens(index: _Index, cid: int) -> int:
    if cid not in index.tokens:
        index.tokens[cid] = count_tokens(example_text(*index.texts[index.position[cid]]))
    return index.tokens[cid]


def _fill(
    index: _Index,
    candidates: Iterable[tuple[int, float | None]],
    rule: str,
    budget: _Budget,
    *,
    limit: int | None,
    left_out: list[Retrieved] | None = None,
) -> list[Retrieved]:
    """Take candidates in order while they fit; one too big is skipped (and noted in
    `left_out`), not a stop."""
    picked: list[Retrieved] = []
    for cid, score in candidates:
        if limit is not None and len(picked) >= limit:
            break
        if cid not in index.position:
            continue  # approved after the index was read; it is in the next turn's index
        tokens = _tokens(index, cid)
        question, answer = index.texts[index.position[cid]]
        item = Retrieved(cid, question, answer, str(rule), tokens, score)
        if budget.take(tokens):
            picked.append(item)
        elif left_out is not None:
            left_out.append(item)
    return picked
