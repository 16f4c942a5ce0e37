"""B10 quality: what the judge pass and the question types make of held-in samples (#15.5).

Runs real jobs inline (upload or import, extraction, chunking, planning, generation with
validation and the judge pass; eager Celery and a SQLite database of its own in a temporary
folder) on a held-in PDF and a held-in conversation export from ../shared/samples, against
(a) the fake model server and (b) the embedded model (`python -m masscer.localmodel`, as
`make run` starts it), and prints per job:

- asked / made, and why any were not made;
- model calls and tokens per accepted pair, generation and judge apart (the judge's from
  the Prometheus counters `masscer_judge_*`, the rest from the job's counters);
- the judge's score distribution (faithfulness of the stored pairs, mean of each criterion)
  and the share of the pairs it scored that it rejected (`judge_low`);
- the question-type mix achieved (`Completion.question_type`) against the mix asked;
- the duplicate rate: pairs the model offered that were rejected as (near-)duplicates, and
  stored pairs whose normalised questions repeat (must be 0).

The fake's figures check the plumbing (its judge scores 1 the pairs that quote "Explicit", one
line of the PDF, and 5 the others); the embedded model's are the real measure of a small model. The
embedded model writes about 9 tokens/s on 2 cores: keep N small (the default, 6 of three
types, takes several minutes per job).

    .venv/bin/python bench/quality_bench.py [--model fake|embedded|both] [--count 6]
        [--types factual=2,procedural=2,unanswerable=2] [--judge-threshold 4] [--write]
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchlib import inline_django, machine, markdown_block, print_table, update_benchmarks_md  # noqa: E402

SAMPLES = ROOT.parent / "shared" / "samples"
PDF = SAMPLES / "pdf" / "google-doc-document.pdf"
CONVERSATIONS = SAMPLES / "conversations" / "openai-messages.jsonl"
DEFAULT_TYPES = "factual=2,procedural=2,unanswerable=2"
SECTION = "## Quality (B10)"
INTRO = (
    "What the judge pass (#15.1) and the question types (#15.2) make of held-in samples: real jobs\n"
    "inline on `google-doc-document.pdf` and `openai-messages.jsonl` from `../shared/samples`, with the\n"
    "judge on. The fake's figures check the plumbing (its judge scores 1 the pairs that quote \"Explicit\",\n"
    "one line of the PDF, and 5 the others); the embedded model's are the measure of a small model\n"
    "grading its own pairs."
)
# The fake judge scores 1 the pairs that quote "Explicit" (one line of the PDF), 5 the others:
# its figures show the plumbing of a rejection (the top-up), not a model's judgement.
FAKE_JUDGE = ({"kind": "judge", "low": "Explicit"},)
# Pairs a reply offered that did not become completions, by reason (validation.REASON_LABELS).
OFFERED_REASONS = (
    "empty_field", "evidence_not_found", "duplicate", "extra_dropped", "spare_unused", "judge_low", "judge_unchecked",
)  # fmt: skip


# --- the model under test ----------------------------------------------------------------------


@contextmanager
def fake_model(workdir: Path) -> Iterator[dict[str, Any]]:
    from testing.fakellm import FakeLLMServer

    with FakeLLMServer() as server:
        server.set_default([{"kind": "good"}, *FAKE_JUDGE])
        yield {"MASSCER_LLM_BASE_URL": server.base_url, "MASSCER_LLM_MODEL": "fake-model", "MASSCER_LLM_MODE": "chat"}


@contextmanager
def embedded_model(workdir: Path) -> Iterator[dict[str, Any]]:
    from testing.embedded import ModelStartError, start_embedded_model
    from testing.processes import stop_process

    try:
        process, url = start_embedded_model(workdir / "model.log")
    except ModelStartError as exc:
        raise SystemExit(str(exc)) from None
    try:
        # Only the port differs from the embedded defaults (model, chat + JSON schema, 0.2, timeout).
        yield {"MASSCER_LLM_BASE_URL": url + "/v1"}
    finally:
        stop_process(process, timeout=30)


MODELS = {"fake": fake_model, "embedded": embedded_model}


def setup_django(workdir: Path) -> None:
    os.environ.pop("PROMETHEUS_MULTIPROC_DIR", None)  # the counters of this process, read in it
    inline_django(workdir)


# --- running the jobs --------------------------------------------------------------------------


@dataclass
class Figures:
    """One job's figures."""

    name: str
    status: str
    error: str
    asked: int
    made: int
    wall: float
    calls: int
    judge_calls: int
    tokens: int
    judge_tokens: int
    reasons: Counter[str]
    faithfulness: Counter[int]
    means: dict[str, float]
    unjudged: int
    types_asked: dict[str, int]
    types_made: Counter[str]
    repeated: int
    samples: list[tuple[str, str, str, str]] = field(default_factory=list)

    @property
    def offered(self) -> int:
        return self.made + sum(self.reasons.get(reason, 0) for reason in OFFERED_REASONS)

    @property
    def judged(self) -> int:
        return self.made - self.unjudged + self.reasons.get("judge_low", 0)


def judge_counters() -> tuple[float, float]:
    """The judge calls that answered and their tokens, as this process counted them so far."""
    from masscer import metrics

    answered = sum(
        s.value
        for m in metrics.JUDGE_CALLS.collect()
        for s in m.samples
        if s.name.endswith("_total") and s.labels["outcome"] in ("ok", "invalid_output", "truncated")
    )
    tokens = sum(s.value for m in metrics.JUDGE_TOKENS.collect() for s in m.samples if s.name.endswith("_total"))
    return answered, tokens


def sources(owner: Any) -> list[tuple[str, dict[str, Any]]]:
    """The held-in PDF and conversation export, stored for `owner`: (name, job_create's source argument)."""
    from conversations.models import Conversation
    from conversations.services import conversations_import
    from documents.services import document_create_from_path

    document = document_create_from_path(owner=owner, path=PDF)
    report = conversations_import(owner=owner, data=CONVERSATIONS.read_bytes(), filename=CONVERSATIONS.name)
    conversations = list(Conversation.objects.filter(pk__in=[c.id for c in report.imported]))
    return [(PDF.name, {"documents": [document]}), (CONVERSATIONS.name, {"conversations": conversations})]


def run_job(owner: Any, agent: Any, name: str, source: dict[str, Any], args: argparse.Namespace) -> Figures:
    from training.models import Completion, TrainingJob, WorkItem
    from training.question_types import parse_types, type_counts
    from training.services import job_create
    from training.validation import normalise

    shares = parse_types(args.types)
    calls_before, tokens_before = judge_counters()
    started = time.monotonic()
    job = job_create(
        owner=owner, count=args.count, agents=[agent], question_types=shares, judge=True,
        judge_threshold=args.judge_threshold, **source,
    )  # fmt: skip
    job = TrainingJob.objects.get(pk=job.pk)
    wall = time.monotonic() - started
    calls_after, tokens_after = judge_counters()
    rows = list(Completion.objects.filter(job=job).order_by("pk"))
    reasons: Counter[str] = Counter()
    for item_reasons in WorkItem.objects.filter(job=job).values_list("reasons", flat=True):
        reasons.update(item_reasons or {})
    judged = [row.judge for row in rows if row.judge]
    criteria = ("faithfulness", "answerability", "usefulness")
    return Figures(
        name=name, status=job.status, error=job.error, asked=job.requested_count, made=len(rows), wall=wall,
        calls=job.calls, judge_calls=round(calls_after - calls_before),
        tokens=job.prompt_tokens + job.completion_tokens, judge_tokens=round(tokens_after - tokens_before),
        reasons=reasons, faithfulness=Counter(score["faithfulness"] for score in judged),
        means={c: sum(score[c] for score in judged) / len(judged) for c in criteria} if judged else {},
        unjudged=len(rows) - len(judged), types_asked=type_counts(shares, args.count),
        types_made=Counter(row.question_type for row in rows),
        repeated=len(rows) - len({normalise(row.question) for row in rows}),
        samples=[(row.question_type, row.question, row.answer, row.evidence) for row in rows],
    )  # fmt: skip


def run_model(kind: str, workdir: Path, args: argparse.Namespace) -> list[Figures]:
    from django.conf import settings
    from django.contrib.auth import get_user_model

    from agents.services import agent_get_or_create

    with MODELS[kind](workdir) as overrides:
        for name, value in overrides.items():
            setattr(settings, name, value)
        owner = get_user_model().objects.create(username=f"bench-{kind}")
        agent, _ = agent_get_or_create(owner=owner, slug="bench")
        jobs = []
        for name, source in sources(owner):
            jobs.append(run_job(owner, agent, name, source, args))
            # A slow model takes minutes per job: say what each made as soon as it is done.
            print_pairs(kind, jobs[-1])
            print_table(f"B10 quality, {kind} model, {name}", rows_for(kind, jobs[-1], args.judge_threshold))
        return jobs


# --- reporting ---------------------------------------------------------------------------------


def per_pair(value: int, made: int) -> str:
    return f"{value / made:.2f}" if made else "no pair made"


def share(part: int, whole: int) -> str:
    return f"{part}/{whole} ({100 * part / whole:.0f} %)" if whole else "0/0"


def rows_for(kind: str, figures: Figures, threshold: int) -> list[tuple[str, str]]:
    made = figures.made
    generation_calls = figures.calls - figures.judge_calls
    scores = ", ".join(f"{grade}: {n}" for grade, n in sorted(figures.faithfulness.items(), reverse=True))
    means = ", ".join(f"{name} {mean:.2f}" for name, mean in figures.means.items())
    types = ", ".join(f"{name} {figures.types_made.get(name, 0)}/{n}" for name, n in figures.types_asked.items())
    extra = sorted(set(figures.types_made) - set(figures.types_asked))
    lost = {k: n for k, n in figures.reasons.items() if n and k not in ("extra_dropped", "spare_unused")}
    return [
        (f"{kind}: {figures.name}", f"{figures.status} in {figures.wall:.0f} s" + (f": {figures.error}" if figures.error else "")),  # noqa: E501
        ("  asked / made", f"{figures.asked} / {made}"),
        ("  calls per accepted pair (generation + judge)", f"{per_pair(figures.calls, made)} ({generation_calls} + {figures.judge_calls} calls)"),  # noqa: E501
        ("  tokens per accepted pair (generation + judge)", f"{per_pair(figures.tokens, made)} ({figures.tokens - figures.judge_tokens} + {figures.judge_tokens})"),  # noqa: E501
        ("  faithfulness of stored pairs", scores or "none judged"),
        ("  mean score of stored pairs", means or "none judged"),
        (f"  rejected by the judge (faithfulness < {threshold})", share(figures.reasons.get("judge_low", 0), figures.judged)),  # noqa: E501
        ("  stored unjudged", str(figures.unjudged)),
        ("  type mix made / asked", types + (f"; also {', '.join(extra)}" if extra else "")),
        ("  duplicates rejected / pairs offered", share(figures.reasons.get("duplicate", 0), figures.offered)),
        ("  stored repeated questions", str(figures.repeated)),
        ("  other rejections", ", ".join(f"{k} {n}" for k, n in sorted(lost.items()) if k not in ("duplicate", "judge_low")) or "none"),  # noqa: E501
    ]


def print_pairs(kind: str, figures: Figures) -> None:
    print(f"\n{kind}: {figures.name}: {figures.made} pairs")
    for question_type, question, answer, evidence in figures.samples:
        print(f"  [{question_type}] Q: {question}\n    A: {answer}\n    E: {evidence}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", choices=("fake", "embedded", "both"), default="fake")
    parser.add_argument("--count", type=int, default=6, help="completions asked per job")
    parser.add_argument("--types", default=DEFAULT_TYPES, help="question types and shares, as `train --types`")
    parser.add_argument("--judge-threshold", type=int, default=4, help="the faithfulness a pair needs")
    parser.add_argument("--write", action="store_true", help="record the figures in BENCHMARKS.md")
    args = parser.parse_args()
    kinds = ["fake", "embedded"] if args.model == "both" else [args.model]
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        setup_django(workdir)
        results = {kind: run_model(kind, workdir, args) for kind in kinds}
    for kind, jobs in results.items():
        rows = [row for figures in jobs for row in rows_for(kind, figures, args.judge_threshold)]
        print_table(f"B10 quality, {kind} model, N = {args.count} ({args.types}), judge on", rows)
        if args.write:
            command = f"bench/quality_bench.py --model {kind} --count {args.count} --types {args.types}"
            heading = f"### {kind} model, {machine().split(',')[0]}, N = {args.count} ({args.types})"
            block = markdown_block(heading, rows, command)
            update_benchmarks_md(
                block, block.splitlines()[0], section_heading=SECTION, intro=INTRO, before="### Findings"
            )


if __name__ == "__main__":
    main()
