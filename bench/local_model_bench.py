"""B7 the embedded model: what a new user's first jobs cost on this machine.

Starts the embedded model as `make run` does (`python -m masscer.localmodel`: Qwen2.5-Coder-
1.5B-Instruct Q4_K_M in llama.cpp's server from the xllamacpp wheel), then runs real jobs
(upload, extraction, chunking, planning, generation with validation, all inline) on a
held-in document with the product's defaults for the embedded model, and prints: wall per
call, prompt and generation tokens/s (the server's own /metrics), pairs asked and made,
calls per accepted pair, and the server's peak RSS. The pairs made are printed too, to be
read by hand: validation proves each evidence quote is in its chunk, not that it supports
the answer.

    .venv/bin/python bench/local_model_bench.py [--count 5] [--jobs 2] [--file PATH] [--write]
"""
from __future__ import annotations

import argparse
import re
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchlib import inline_django, machine, markdown_block, print_table, update_benchmarks_md  # noqa: E402

from testing.embedded import HANDBOOK, ModelStartError, start_embedded_model  # noqa: E402

SECTION = "## Embedded model (B7)"
INTRO = (
    "A new user's first jobs on the embedded default model (`make run`): real jobs on a held-in\n"
    "one-page handbook, inline, against `python -m masscer.localmodel`."
)


def metrics(url: str) -> dict[str, float]:
    text = urllib.request.urlopen(url + "/metrics", timeout=5).read().decode()
    return {m[1]: float(m[2]) for m in re.finditer(r"^llamacpp:(\w+)\s+([-\d.e+]+)$", text, re.MULTILINE)}


def peak_rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return 0.0


def setup_django(workdir: Path, base_url: str) -> None:
    inline_django(workdir)
    from django.conf import settings

    # Only the port differs from the embedded defaults (model, chat + JSON schema, 0.2, timeout):
    # set after the settings are read, which choose those defaults when no endpoint is given.
    settings.MASSCER_LLM_BASE_URL = base_url + "/v1"


def run_jobs(source: Path, count: int, jobs: int) -> list[dict]:
    from django.contrib.auth import get_user_model

    from agents.services import agent_get_or_create
    from documents.services import document_create_from_path
    from training.models import Completion, TrainingJob
    from training.services import job_create

    user = get_user_model().objects.create(username="bench")
    agent, _ = agent_get_or_create(owner=user, slug="bench")
    document = document_create_from_path(owner=user, path=source)
    results = []
    for _ in range(jobs):
        started = time.monotonic()
        job = job_create(owner=user, count=count, agents=[agent], documents=[document])
        job = TrainingJob.objects.get(pk=job.pk)
        pairs = list(Completion.objects.filter(job=job).values_list("question", "answer", "evidence"))
        results.append({"job": job, "wall": time.monotonic() - started, "pairs": pairs})
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--count", type=int, default=5, help="completions asked per job")
    parser.add_argument("--jobs", type=int, default=2, help="jobs run one after the other")
    parser.add_argument("--file", type=Path, help="a document instead of the held-in handbook")
    parser.add_argument("--write", action="store_true", help="record the figures in BENCHMARKS.md")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        source = args.file or workdir / "handbook.md"
        if args.file is None:
            source.write_text(HANDBOOK)
        started = time.monotonic()
        try:
            process, url = start_embedded_model(workdir / "model.log")
        except ModelStartError as exc:
            raise SystemExit(str(exc)) from None
        start_seconds = time.monotonic() - started
        try:
            setup_django(workdir, url)
            results = run_jobs(source, args.count, args.jobs)
            figures = metrics(url)
            rss = peak_rss_mib(process.pid)
        finally:
            process.terminate()
            process.wait(30)
    jobs = [r["job"] for r in results]
    calls = sum(j.calls for j in jobs)
    made = sum(j.created_count for j in jobs)
    wall = sum(r["wall"] for r in results)
    for number, result in enumerate(results, 1):
        job = result["job"]
        print(f"\njob {number}: {job.status}, {job.created_count}/{job.requested_count} in {result['wall']:.0f} s, "
              f"{job.calls} calls, reasons {job.shortfall_reasons or {}}")
        for question, answer, evidence in result["pairs"]:
            print(f"  Q: {question}\n  A: {answer}\n  E: {evidence}\n")
    rows = [
        ("document", f"{source.name}, {jobs[0].chunks_total} chunk(s)"),
        ("model start (assemble check + load)", f"{start_seconds:.1f} s"),
        ("jobs", f"{len(jobs)} of N = {args.count}"),
        ("pairs asked / made", f"{args.count * len(jobs)} / {made}"),
        ("wall per job", " / ".join(f"{r['wall']:.0f} s" for r in results)),
        ("model calls", str(calls)),
        ("wall per call", f"{wall / max(calls, 1):.1f} s"),
        ("calls per accepted pair", f"{calls / made:.2f}" if made else "no pair made"),
        ("prompt tokens/s (server)", f"{figures.get('prompt_tokens_seconds', 0):.1f}"),
        ("generation tokens/s (server)", f"{figures.get('predicted_tokens_seconds', 0):.1f}"),
        ("prompt / generated tokens", f"{sum(j.prompt_tokens for j in jobs)} / {sum(j.completion_tokens for j in jobs)}"),  # noqa: E501
        ("model server peak RSS", f"{rss:.0f} MiB"),
    ]
    print_table("B7 embedded model", rows)
    if args.write:
        command = "bench/local_model_bench.py " + " ".join(sys.argv[1:])
        block = markdown_block(f"### {machine().split(',')[0]}, N = {args.count}", rows, command.strip())
        update_benchmarks_md(block, block.splitlines()[0], section_heading=SECTION, intro=INTRO)


if __name__ == "__main__":
    main()
