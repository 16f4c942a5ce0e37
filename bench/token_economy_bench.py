"""B6 token economy: prompt + completion tokens per accepted completion.

Runs a real job (extraction, chunking, planning, generation with validation) on the 4-page
sample against the fake model, counting prompt tokens with tiktoken on the exact prompts
sent, and compares with a baseline that sends the whole document in every call (as Masscer
does) for the same number of pairs per call.

    .venv/bin/python bench/token_economy_bench.py [--count 20]
"""
from __future__ import annotations

import argparse
import math
import os
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
SAMPLE = ROOT.parent / "shared" / "samples" / "pdf" / "pdflatex-4-pages.pdf"

from benchlib import inline_django  # noqa: E402


def setup_django(workdir: Path) -> None:
    os.environ.setdefault("DJANGO_DEBUG", "1")  # a development run
    inline_django(
        workdir,
        MASSCER_LLM_MODE="chat",
        MASSCER_LLM_MODEL="fake-model",
        MASSCER_JUDGE_DEFAULT="0",  # the figures are of generation
    )


def prompt_tokens(request: dict) -> int:
    from masscer.lib.tokens import count_tokens

    return sum(count_tokens(m["content"]) + 4 for m in request["messages"]) + 3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--count", type=int, default=20)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        setup_django(Path(tmp))
        from django.conf import settings
        from django.contrib.auth import get_user_model

        from agents.services import agent_get_or_create
        from documents.services import document_create_from_path
        from masscer.lib.tokens import count_tokens
        from testing.fakellm import FakeLLMServer, read_prompt
        from training.models import Completion, TrainingJob
        from training.services import job_create

        with FakeLLMServer() as fake:
            settings.MASSCER_LLM_BASE_URL = fake.base_url
            user = get_user_model().objects.create(username="bench")
            agent, _ = agent_get_or_create(owner=user, slug="bench")
            document = document_create_from_path(owner=user, path=SAMPLE)
            job = job_create(owner=user, count=args.count, agents=[agent], documents=[document])
            job = TrainingJob.objects.get(pk=job.pk)
            accepted = Completion.objects.filter(job=job).count()
            calls = fake.calls
            ours_prompt = sum(prompt_tokens(c["request"]) for c in calls)
            ours_completion = job.completion_tokens
            document_text = "\n\n".join(document.pages.order_by("number").values_list("text", flat=True))
            doc_tokens = count_tokens(document_text)
            # Baseline: the same pairs per call, but every call carries the whole document in
            # place of the chunk (the rest of the prompt is the same).
            per_call = settings.MASSCER_PAIRS_PER_CALL
            baseline_calls = math.ceil(args.count / per_call)
            # Per call: everything in the prompt but the source text (rules, questions to avoid ...).
            overhead = sum(
                prompt_tokens(c["request"]) - count_tokens(read_prompt(c["prompt"]).source or "") for c in calls
            ) / len(calls)
            baseline_prompt = baseline_calls * (overhead + doc_tokens)
            baseline_completion = ours_completion  # the same pairs are written either way
        print(f"job status: {job.status}; accepted {accepted} of {args.count}; model calls {len(calls)}")
        print(f"document: {doc_tokens} tokens, {document.chunks.count()} chunks")
        print(f"{'':24}{'prompt':>10}{'completion':>12}{'per accepted':>14}")
        ours_total = ours_prompt + ours_completion
        base_total = baseline_prompt + baseline_completion
        for label, prompt, completion, total in (
            ("chunked (ours)", ours_prompt, ours_completion, ours_total),
            ("whole doc per call", baseline_prompt, baseline_completion, base_total),
        ):
            print(f"{label:24}{prompt:>10.0f}{completion:>12}{total / accepted:>14.1f}")
        print(f"ratio ours / baseline: {ours_total / base_total:.2f}")


if __name__ == "__main__":
    main()
