"""Ingestion benchmark: bare pypdf versus our isolated extraction plus chunking, and one
extraction child versus two reading the same PDF at once.

Run from anywhere: ``.venv/bin/python bench/ingest_bench.py [path/to/file.pdf]``.
Both sides run in the same process run on the same file, best of 3 each, interleaved so that
machine noise hits both alike. The goal is an overhead of at most 25 %.

Then ``extract_isolated(processes=1)`` against ``processes=2`` (#17), as ``documents``
calls it (token limit counted in the children): the time until ``on_pages`` has heard the
first and the last page, and the children's CPU time, best of 3 each, interleaved.
"""

from __future__ import annotations

import resource
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

PROJECT_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(PROJECT_ROOT))

from masscer.lib.extract import extract_isolated
from masscer.lib.tokens import chunk_pages

DEFAULT_SAMPLE = (
    PROJECT_ROOT / ".." / "shared" / "samples" / "pdf" / "GeoTopo-komprimiert.pdf"
)
ROUNDS = 3
T = TypeVar("T")
GOAL_PERCENT = 25.0


def bare_pypdf(path: Path) -> int:
    from pypdf import PdfReader

    reader = PdfReader(path)
    texts = [page.extract_text() for page in reader.pages]
    return len(texts)


def ours(path: Path) -> tuple[int, int, float]:
    """(pages, chunks, seconds spent chunking) of the full pipeline."""
    extracted = extract_isolated(
        str(path), filename=path.name, max_bytes=200 * 1024 * 1024, max_pages=5000
    )
    seconds, chunks = timed(
        lambda: chunk_pages(extracted.pages, budget=800, overlap=80)
    )
    return len(extracted.pages), len(chunks), seconds


def pages_heard(path: Path, processes: int) -> tuple[float, float]:
    """(seconds until the first page was heard, until the last) reading with ``processes``."""
    began = time.perf_counter()
    first = last = 0.0

    def hear(total: int, start: int, texts: list[str]) -> None:
        nonlocal first, last
        now = time.perf_counter() - began
        first = first or now
        if start + len(texts) - 1 == total:
            last = now

    extract_isolated(
        str(path), filename=path.name, max_bytes=200 * 1024 * 1024, max_pages=5000,
        max_tokens=10_000_000, on_pages=hear, processes=processes,
    )  # fmt: skip
    return first, last


def compare_processes(path: Path) -> None:
    """Print the time to the first and the last page with one child and with two."""
    runs: dict[int, list[tuple[float, float, float]]] = {1: [], 2: []}
    for _ in range(ROUNDS):
        for processes in runs:
            _, cpu, (first, last) = cpu_timed(lambda: pages_heard(path, processes))  # noqa: B023
            runs[processes].append((first, last, cpu))
    best = {processes: min(times, key=lambda run: run[1]) for processes, times in runs.items()}
    for processes, (first, last, cpu) in best.items():
        print(
            f"{processes} child{'ren' if processes > 1 else '':3}       first page {first:.2f} s, "
            f"last page {last:.2f} s, children's CPU {cpu:.2f} s  "
            f"runs: {_list([run[1] for run in runs[processes]])}"
        )
    one, two = best[1][1], best[2][1]
    reading = (one - best[1][0]) / max(1e-9, two - best[2][0])
    print(f"two vs one:        last page {one / two:.2f}x sooner; first to last page {reading:.2f}x faster")


def timed(function: Callable[[], T]) -> tuple[float, T]:
    began = time.perf_counter()
    result = function()
    return time.perf_counter() - began, result


def cpu_seconds() -> float:
    """User + system CPU time of this process and its waited-for children so far."""
    total = 0.0
    for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN):
        usage = resource.getrusage(who)
        total += usage.ru_utime + usage.ru_stime
    return total


def cpu_timed(function: Callable[[], T]) -> tuple[float, float, T]:
    """(wall seconds, CPU seconds, result); CPU time is less disturbed by other load."""
    cpu_before = cpu_seconds()
    wall, result = timed(function)
    return wall, cpu_seconds() - cpu_before, result


def peak_mb(who: int) -> float:
    return resource.getrusage(who).ru_maxrss / 1024  # ru_maxrss is in KiB on Linux


def main() -> None:
    path = Path(sys.argv[1]) if len(sys.argv) > 1 else DEFAULT_SAMPLE
    path = path.resolve()
    bare_times: list[float] = []
    our_times: list[float] = []
    bare_cpu: list[float] = []
    our_cpu: list[float] = []
    chunk_times: list[float] = []
    pages = chunks = 0
    for _ in range(ROUNDS):
        wall, cpu, _ = cpu_timed(lambda: bare_pypdf(path))
        bare_times.append(wall)
        bare_cpu.append(cpu)
        wall, cpu, (pages, chunks, chunking) = cpu_timed(lambda: ours(path))
        our_times.append(wall)
        our_cpu.append(cpu)
        chunk_times.append(chunking)
    bare, our = min(bare_times), min(our_times)
    overhead = (our / bare - 1) * 100
    cpu_overhead = (min(our_cpu) / min(bare_cpu) - 1) * 100
    verdict = "within" if overhead <= GOAL_PERCENT else "ABOVE"
    size_mb = path.stat().st_size / 1024 / 1024
    print(f"file:              {path.name} ({size_mb:.1f} MB, {pages} pages)")
    print(
        f"bare pypdf:        {bare:.2f} s  ({pages / bare:.1f} pages/s)  runs: {_list(bare_times)}"
    )
    print(
        f"isolated + chunks: {our:.2f} s  ({pages / our:.1f} pages/s)  runs: {_list(our_times)}"
    )
    print(
        f"overhead:          {overhead:+.1f} % ({verdict} the {GOAL_PERCENT:.0f} % goal)"
    )
    print(
        f"CPU time:          bare {min(bare_cpu):.2f} s, ours {min(our_cpu):.2f} s "
        f"(overhead {cpu_overhead:+.1f} %)"
    )
    print(
        f"chunks:            {chunks} (budget 800, overlap 80), "
        f"chunking alone {min(chunk_times):.3f} s"
    )
    print(
        f"peak RSS:          self {peak_mb(resource.RUSAGE_SELF):.0f} MB, "
        f"extraction child {peak_mb(resource.RUSAGE_CHILDREN):.0f} MB"
    )
    compare_processes(path)


def _list(times: list[float]) -> str:
    return ", ".join(f"{seconds:.2f}" for seconds in times)


if __name__ == "__main__":
    main()
