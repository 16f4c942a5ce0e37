"""Streamed dataset export of an agent's completions, in constant memory.

Formats:

- `openai-jsonl`: OpenAI chat fine-tuning lines `{"messages": [system?, user, assistant]}`,
  each checked the way OpenAI's data-preparation check does (`training.openai_check`); an
  example that fails is skipped and counted in the `ExportReport`.
- `records`: one JSON object per line with the full provenance of each completion.
- `alpaca`: a JSON array of `{"instruction", "input", "output"[, "system"]}`.
- `sharegpt`: a JSON array of `{"conversations": [{"from": "human"}, {"from": "gpt"}][, "system"]}`
  (the shape LLaMA-Factory reads, and our own conversation importer too).
- `csv`: a header and one row per completion.

Rows come from the database with `.iterator(chunk_size=BATCH)` and are written as they come:
JSON arrays are streamed element by element, so memory does not grow with the export.

A train/validation split is grouped by source: all completions of one document or
conversation land on the same side. Sources are shuffled with the seed and moved to the
validation side until it holds at least the asked fraction of the rows (`split_plan`).
"""
from __future__ import annotations

import csv
import io
import json
import random
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from django.db.models import Count, Prefetch, QuerySet

from .models import Assignment, Completion
from .openai_check import MAX_EXAMPLE_TOKENS, SKIP_LABELS, openai_problems
from .question_types import QUESTION_TYPES, type_filter

FORMATS = ("openai-jsonl", "records", "alpaca", "sharegpt", "csv")
STATUSES = ("approved", "pending", "rejected", "all")
PARTS = ("train", "validation")
BATCH = 1000
# Skipped examples listed by id in a report (the counts are always complete).
REPORT_EXAMPLES = 100

# Whole conversations, several turns with tool calls and results (`training.conversation_export`).
CONVERSATION_FORMATS = ("openai-multiturn", "sharegpt-multiturn")
CONTENT_TYPES = {
    "openai-jsonl": "application/jsonl",
    "records": "application/jsonl",
    "alpaca": "application/json",
    "sharegpt": "application/json",
    "csv": "text/csv",
    "openai-multiturn": "application/jsonl",
    "sharegpt-multiturn": "application/json",
}
# Alpaca and ShareGPT are one JSON array, not JSON Lines: .json, application/json.
EXTENSIONS = {
    "openai-jsonl": "jsonl", "records": "jsonl", "alpaca": "json", "sharegpt": "json", "csv": "csv",
    "openai-multiturn": "jsonl", "sharegpt-multiturn": "json",
}


# --- the report ---------------------------------------------------------------------------


@dataclass
class ExportReport:
    """What an export wrote per part, and what it skipped and why."""

    written: Counter[str] = field(default_factory=Counter)
    sources: Counter[str] = field(default_factory=Counter)
    skipped: Counter[str] = field(default_factory=Counter)
    skipped_total: int = 0
    skipped_examples: list[tuple[int, str]] = field(default_factory=list)
    unit: str = "completion"  # what an example is made from: a completion, or a conversation

    def skip(self, completion_id: int, reasons: list[str]) -> None:
        self.skipped.update(reasons)
        self.skipped_total += 1
        if len(self.skipped_examples) < REPORT_EXAMPLES:
            self.skipped_examples.append((completion_id, ", ".join(reasons)))

    def lines(self) -> list[str]:
        """Human-readable lines for stderr."""
        out = [
            f"{part}: {self.written[part]} examples from {self.sources[part]} sources" for part in sorted(self.written)
        ]
        if self.skipped:
            details = "; ".join(f"{SKIP_LABELS.get(key, key)} ({n}×)" for key, n in sorted(self.skipped.items()))
            out.append(f"skipped {self.skipped_total}: {details}")
            out.extend(f"  {self.unit} {pk}: {reason}" for pk, reason in self.skipped_examples)
        return out

    def as_dict(self) -> dict[str, Any]:
        return {
            "written": dict(self.written),
            "sources": dict(self.sources),
            "skipped": dict(self.skipped),
            "skipped_total": self.skipped_total,
            "skipped_examples": [{f"{self.unit}_id": pk, "reasons": reason} for pk, reason in self.skipped_examples],
        }


# --- the file ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class ExportFile:
    """What one export's file is called and what it holds, the same for every door."""

    name: str
    extension: str
    media_type: str

    @property
    def content_type(self) -> str:
        return f"{self.media_type}; charset=utf-8"


def export_file(*, fmt: str, stem: str, part: str = "") -> ExportFile:
    """`stem[.part].extension` and the media type of a format: the web page, the API and the
    command line all name their files here."""
    if fmt not in EXTENSIONS:
        raise ValueError(f"Unknown format {fmt!r}; use one of {', '.join(EXTENSIONS)}.")
    name = ".".join(piece for piece in (stem, part, EXTENSIONS[fmt]) if piece)
    return ExportFile(name=name, extension=EXTENSIONS[fmt], media_type=CONTENT_TYPES[fmt])


# --- rows -------------------------------------------------------------------------------------


def agent_completions(*, agent: Any, status: str = "approved", question_type: str = "") -> QuerySet[Completion]:
    """The agent's completions of `status` ("all": any) and, if given, of one kind of question."""
    if status not in STATUSES:
        raise ValueError(f"Unknown status {status!r}; use one of {', '.join(STATUSES)}.")
    if question_type and question_type not in QUESTION_TYPES:
        raise ValueError(f"Unknown question type {question_type!r}; use one of {', '.join(QUESTION_TYPES)}.")
    rows = Completion.objects.filter(assignments__agent=agent)
    if status != "all":
        rows = rows.filter(status=status)
    if question_type:
        rows = rows.filter(question_type__in=type_filter(question_type))
    return rows.order_by("pk")


def _rows(agent: Any, fmt: str, status: str, question_type: str) -> Iterator[Completion]:
    rows = agent_completions(agent=agent, status=status, question_type=question_type)
    if fmt in ("openai-jsonl", "alpaca", "sharegpt"):
        rows = rows.select_related("chunk").only(
            "pk", "question", "answer", "chunk__document_id", "chunk__conversation_id"
        )
    elif fmt == "csv":
        rows = rows.select_related("chunk", "chunk__document", "chunk__conversation").defer("chunk__text")
    else:
        rows = rows.select_related("chunk", "chunk__document", "chunk__conversation").prefetch_related(
            Prefetch("assignments", queryset=Assignment.objects.select_related("agent"))
        )
    return rows.iterator(chunk_size=BATCH)


def source_key(completion: Completion) -> str:
    chunk = completion.chunk
    return f"document:{chunk.document_id}" if chunk.document_id else f"conversation:{chunk.conversation_id}"


# --- the split ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class SplitPlan:
    validation: frozenset[str]

    def part_of(self, completion: Completion) -> str:
        return "validation" if source_key(completion) in self.validation else "train"


def split_plan(*, agent: Any, status: str, fraction: float, seed: int, question_type: str = "") -> SplitPlan:
    """Choose the validation sources: shuffled with `seed`, taken until `fraction` of the rows.

    With two or more sources each side gets at least one; with one source everything is
    training data. Memory is one entry per source, not per completion.
    """
    if not 0 < fraction < 1:
        raise ValueError("The validation fraction must be between 0 and 1 (e.g. 0.1).")
    counts: Counter[str] = Counter()
    grouped = agent_completions(agent=agent, status=status, question_type=question_type).values(
        "chunk__document_id", "chunk__conversation_id"
    )
    for row in grouped.annotate(n=Count("pk")).order_by():
        if row["chunk__document_id"]:
            counts[f"document:{row['chunk__document_id']}"] += row["n"]
        else:
            counts[f"conversation:{row['chunk__conversation_id']}"] += row["n"]
    keys = sorted(counts)
    random.Random(seed).shuffle(keys)
    chosen: list[str] = []
    wanted = fraction * sum(counts.values())
    taken = 0
    for key in keys[:-1]:  # the last one always stays for training
        if taken >= wanted and chosen:
            break
        chosen.append(key)
        taken += counts[key]
    return SplitPlan(validation=frozenset(chosen))


# --- formatters: one per output, so JSON arrays know whether an element came before -----------


class Formatter:
    def __init__(self, system_prompt: str, max_tokens: int, report: ExportReport) -> None:
        self.system_prompt = system_prompt.strip()
        self.max_tokens = max_tokens
        self.report = report

    def head(self) -> str:
        return ""

    def item(self, completion: Completion) -> str | None:
        raise NotImplementedError

    def tail(self) -> str:
        return ""


def openai_line(completion: Completion, system_prompt: str) -> dict[str, Any]:
    messages = [{"role": "system", "content": system_prompt}] if system_prompt.strip() else []
    messages += [
        {"role": "user", "content": completion.question},
        {"role": "assistant", "content": completion.answer},
    ]
    return {"messages": messages}


class OpenAIFormatter(Formatter):
    def item(self, completion: Completion) -> str | None:
        example = openai_line(completion, self.system_prompt)
        problems = openai_problems(example, max_tokens=self.max_tokens)
        if problems:
            self.report.skip(completion.pk, problems)
            return None
        return json.dumps(example, ensure_ascii=False) + "\n"


def record_line(completion: Completion) -> dict[str, Any]:
    chunk = completion.chunk
    source = chunk.document if chunk.document_id else chunk.conversation
    return {
        "id": completion.pk,
        "question": completion.question,
        "answer": completion.answer,
        "evidence": completion.evidence,
        "status": completion.status,
        "edited": completion.edited,
        "agents": [assignment.agent.slug for assignment in completion.assignments.all()],
        "source_type": chunk.source_type,
        "source_id": source.pk if source else None,
        "source_title": str(source) if source else "",
        "job_id": completion.job_id,
        "model": completion.model,
        "chunk_index": chunk.index,
        "locator": chunk.locator,
        "chunk_text": chunk.text,
        "redacted": completion.redacted,
        # The kind of question (factual, procedural, ...), or None: made before question types.
        "question_type": completion.question_type or None,
        # {"faithfulness", "answerability", "usefulness": 1-5, "reasons": {...}}, or None: not judged.
        "judge": completion.judge,
        "reviewed_at": completion.reviewed_at.isoformat() if completion.reviewed_at else None,
        "created_at": completion.created_at.isoformat(),
    }


class RecordsFormatter(Formatter):
    def item(self, completion: Completion) -> str | None:
        return json.dumps(record_line(completion), ensure_ascii=False) + "\n"


class JSONArrayFormatter(Formatter):
    """Writes `[`, then elements separated by commas, then `]`, one element at a time."""

    first = True

    def head(self) -> str:
        return "["

    def element(self, completion: Completion) -> dict[str, Any]:
        raise NotImplementedError

    def item(self, completion: Completion) -> str | None:
        if not (completion.question.strip() and completion.answer.strip()):
            self.report.skip(completion.pk, ["missing_content"])
            return None
        text = json.dumps(self.element(completion), ensure_ascii=False)
        prefix = "\n" if self.first else ",\n"
        self.first = False
        return prefix + text

    def tail(self) -> str:
        return "]\n" if self.first else "\n]\n"


class AlpacaFormatter(JSONArrayFormatter):
    def element(self, completion: Completion) -> dict[str, Any]:
        element = {"instruction": completion.question, "input": "", "output": completion.answer}
        if self.system_prompt:
            element["system"] = self.system_prompt
        return element


class ShareGPTFormatter(JSONArrayFormatter):
    def element(self, completion: Completion) -> dict[str, Any]:
        element: dict[str, Any] = {
            "conversations": [
                {"from": "human", "value": completion.question},
                {"from": "gpt", "value": completion.answer},
            ]
        }
        if self.system_prompt:
            element["system"] = self.system_prompt
        return element


CSV_COLUMNS = [
    "id", "question", "answer", "evidence", "status", "edited", "source_type", "source_id", "source_title",
    "locator", "model", "job_id", "created_at",
]
# Spreadsheet programs run a cell that starts with one of these as a formula (OWASP "CSV
# injection"); model output is data, so such cells get a leading apostrophe.
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def csv_safe(value: Any) -> Any:
    if isinstance(value, str) and value.startswith(_FORMULA_START):
        return "'" + value
    return value


class CSVFormatter(Formatter):
    def _row(self, values: list[Any]) -> str:
        buffer = io.StringIO()
        csv.writer(buffer, lineterminator="\r\n").writerow([csv_safe(value) for value in values])
        return buffer.getvalue()

    def head(self) -> str:
        return self._row(CSV_COLUMNS)

    def item(self, completion: Completion) -> str | None:
        chunk = completion.chunk
        source = chunk.document if chunk.document_id else chunk.conversation
        return self._row([
            completion.pk, completion.question, completion.answer, completion.evidence, completion.status,
            completion.edited, chunk.source_type, source.pk if source else "", str(source) if source else "",
            chunk.locator_label, completion.model, completion.job_id, completion.created_at.isoformat(),
        ])


FORMATTERS: dict[str, type[Formatter]] = {
    "openai-jsonl": OpenAIFormatter,
    "records": RecordsFormatter,
    "alpaca": AlpacaFormatter,
    "sharegpt": ShareGPTFormatter,
    "csv": CSVFormatter,
}


# --- entry points -------------------------------------------------------------------------------


def export_stream(
    *,
    agent: Any,
    fmt: str,
    status: str = "approved",
    split: float = 0.0,
    seed: int = 0,
    max_tokens: int = MAX_EXAMPLE_TOKENS,
    report: ExportReport | None = None,
    question_type: str = "",
) -> Iterator[tuple[str, str]]:
    """Yield `(part, text)` pieces in one pass over the rows; part is "train" or "validation".

    Without a split everything is "train". Concatenating one part's pieces gives its file.
    `question_type` keeps one kind of question ("": all).
    """
    if fmt not in FORMATS:
        raise ValueError(f"Unknown format {fmt!r}; use one of {', '.join(FORMATS)}.")
    report = report if report is not None else ExportReport()
    plan = None
    if split:
        plan = split_plan(agent=agent, status=status, fraction=split, seed=seed, question_type=question_type)
    parts = PARTS if plan else ("train",)
    writers = {part: FORMATTERS[fmt](agent.system_prompt, max_tokens, report) for part in parts}
    seen_sources: dict[str, set[str]] = {part: set() for part in parts}
    for part in parts:
        yield part, writers[part].head()
    for completion in _rows(agent, fmt, status, question_type):
        part = plan.part_of(completion) if plan else "train"
        text = writers[part].item(completion)
        if text is not None:
            report.written[part] += 1
            seen_sources[part].add(source_key(completion))
            yield part, text
    for part in parts:
        # One entry per source, not per row: the memory stays proportional to the sources.
        report.sources[part] = len(seen_sources[part])
        report.written.setdefault(part, 0)
        yield part, writers[part].tail()


def export_lines(
    *,
    agent: Any,
    fmt: str,
    status: str = "approved",
    part: str = "train",
    split: float = 0.0,
    seed: int = 0,
    max_tokens: int = MAX_EXAMPLE_TOKENS,
    report: ExportReport | None = None,
    question_type: str = "",
) -> Iterator[str]:
    """The text of one output (the whole export, or one side of a split), piece by piece.

    A view can hand this to `StreamingHttpResponse` as it is.
    """
    if part not in PARTS:
        raise ValueError(f"Unknown part {part!r}; use train or validation.")
    for piece_part, text in export_stream(
        agent=agent, fmt=fmt, status=status, split=split, seed=seed, max_tokens=max_tokens, report=report,
        question_type=question_type,
    ):
        if piece_part == part and text:
            yield text


def export_report(
    *, agent: Any, fmt: str = "openai-jsonl", status: str = "approved", max_tokens: int = MAX_EXAMPLE_TOKENS,
    split: float = 0.0, seed: int = 0, question_type: str = "",
) -> ExportReport:
    """Run an export without keeping its output, for the report alone."""
    report = ExportReport()
    for _ in export_stream(
        agent=agent, fmt=fmt, status=status, split=split, seed=seed, max_tokens=max_tokens, report=report,
        question_type=question_type,
    ):
        pass
    return report
