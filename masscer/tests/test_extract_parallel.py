"""A long PDF read by two isolated children at once (#17): the same pages, title, tokens and
errors as one child, pages heard contiguous and in order, and one child failing stops the
other with the usual message, leaving no process behind."""

from __future__ import annotations

import functools
import os
import signal
import subprocess
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from masscer.lib.extract import ExtractionError, extract_isolated, isolation
from masscer.lib.extract.common import LIMITS_MESSAGE, NO_TEXT_PDF_MESSAGE
from masscer.lib.extract.pdf import NESTED_PDF_MESSAGE
from masscer.lib.extract.shares import (
    BadReport,
    InOrder,
    Share,
    ShareStats,
    document_error,
)
from masscer.lib.tokens import count_tokens
from masscer.tests.test_hostile_files import CASES, _pdf

SAMPLES = Path(__file__).resolve().parents[3] / "shared" / "samples" / "pdf"
GEOTOPO = SAMPLES / "GeoTopo-komprimiert.pdf"
MB = 1024 * 1024
LIMITS: dict[str, Any] = {"max_bytes": 50 * MB, "max_pages": 2000, "max_tokens": 10_000_000}
# How two children may be run: the default batches (only GeoTopo is long enough to split),
# or one-page batches so that a 4-page PDF splits too; both children at once, or the second
# only once the first has counted the pages.
MODES = {
    "default-eager": {"BATCH_PAGES": isolation.BATCH_PAGES, "EAGER_SPLIT_BYTES": 0},
    "default-lazy": {"BATCH_PAGES": isolation.BATCH_PAGES, "EAGER_SPLIT_BYTES": 10**12},
    "one-page-batches-eager": {"BATCH_PAGES": 1, "EAGER_SPLIT_BYTES": 0},
    "one-page-batches-lazy": {"BATCH_PAGES": 1, "EAGER_SPLIT_BYTES": 10**12},
}


class _Started(subprocess.Popen):  # type: ignore[type-arg]
    """subprocess.Popen that remembers every extraction child it started."""

    all: list[subprocess.Popen[bytes]] = []

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        _Started.all.append(self)


@pytest.fixture(autouse=True)
def started(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[subprocess.Popen[bytes]]]:
    """The children each test started; afterwards, none of them may still run."""
    _Started.all = []
    monkeypatch.setattr(isolation.subprocess, "Popen", _Started)
    yield _Started.all
    assert all(proc.returncode is not None for proc in _Started.all)  # reaped, not just killed
    assert _running_children() == []


def _running_children() -> list[int]:
    """Extraction children of this process that are still alive (zombies included)."""
    pids: list[int] = []
    for task in os.listdir("/proc/self/task"):
        with open(f"/proc/self/task/{task}/children") as handle:
            pids += [int(pid) for pid in handle.read().split()]
    return [pid for pid in pids if _runs_the_child_script(pid)]


def _runs_the_child_script(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as handle:
            argv = handle.read()
        with open(f"/proc/{pid}/stat") as handle:
            zombie = handle.read().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return False
    return zombie or isolation._CHILD_SCRIPT.encode() in argv


@pytest.fixture(params=list(MODES))
def mode(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    for name, value in MODES[request.param].items():
        monkeypatch.setattr(isolation, name, value)
    return str(request.param)


def _read(path: Path, processes: int, **options: Any) -> tuple[object, list[tuple[int, int, list[str]]]]:
    """(the result, or the error's message; what on_pages heard)."""
    heard: list[tuple[int, int, list[str]]] = []
    options = {**LIMITS, **options}
    try:
        result: object = extract_isolated(
            str(path), filename=path.name, processes=processes, on_pages=lambda *b: heard.append(b), **options
        )
    except ExtractionError as exc:
        result = str(exc)
    return result, heard


@functools.cache
def _one_child(name: str) -> object:
    return _read(SAMPLES / name, 1)[0]


def assert_contiguous_in_order(heard: list[tuple[int, int, list[str]]], pages: list[str] | None = None) -> None:
    """Each call starts where the previous one ended, from page 1; with ``pages``, they were
    all heard, as they are in the result."""
    expected_first = 1
    for total, first, texts in heard:
        assert first == expected_first and texts and first + len(texts) - 1 <= total, heard
        expected_first += len(texts)
    if pages is not None:
        assert [text for _, _, texts in heard for text in texts] == pages


# ------------------------------------------------------------------ the same as one child


@pytest.mark.parametrize("name", sorted(path.name for path in SAMPLES.glob("*.pdf")))
def test_two_children_read_every_sample_as_one_does(mode: str, name: str) -> None:
    result, heard = _read(SAMPLES / name, 2)
    assert result == _one_child(name)  # pages, title, kind and tokens, or the same message
    if not isinstance(result, str):
        assert_contiguous_in_order(heard, result.pages)  # type: ignore[attr-defined]


def test_a_long_pdf_is_read_by_two_children_and_heard_in_order(started: list[Any]) -> None:
    result, heard = _read(GEOTOPO, 2)
    assert len(started) == 2
    assert not isinstance(result, str)
    assert len(result.pages) == 117  # type: ignore[attr-defined]
    assert_contiguous_in_order(heard, result.pages)  # type: ignore[attr-defined]


def test_a_short_pdf_or_another_file_costs_one_child(started: list[Any], tmp_path: Path) -> None:
    _read(SAMPLES / "pdflatex-4-pages.pdf", 2)
    assert len(started) == 1
    notes = tmp_path / "notes.md"
    notes.write_text("# Refunds\n\nWithin 14 days.\n", encoding="utf-8")
    result, heard = _read(notes, 2)
    assert len(started) == 2 and heard == [(1, 1, result.pages)]  # type: ignore[attr-defined]


def test_the_token_count_and_its_limit_are_exactly_one_childs(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(isolation, "BATCH_PAGES", 1)
    path = SAMPLES / "pdflatex-4-pages.pdf"
    result, _ = _read(path, 2)
    expected = sum(count_tokens(page) for page in result.pages)  # type: ignore[attr-defined]
    assert result.tokens == expected  # type: ignore[attr-defined]
    assert _read(path, 2, max_tokens=expected)[0] == result
    refused, heard = _read(path, 2, max_tokens=expected - 1)
    assert refused == _read(path, 1, max_tokens=expected - 1)[0]
    assert refused == f"The document has more than {expected - 1:,} tokens of text; the limit is {expected - 1:,}."
    assert_contiguous_in_order(heard, result.pages[:3])  # type: ignore[attr-defined] # all within the limit


def test_the_token_limit_stops_both_children_after_pages_within_it() -> None:
    one, heard_one = _read(GEOTOPO, 1, max_tokens=5_000)
    two, heard_two = _read(GEOTOPO, 2, max_tokens=5_000)
    assert two == one == "The document has more than 5,000 tokens of text; the limit is 5,000."
    assert_contiguous_in_order(heard_two)
    # The same pages at most: the parent counts in document order and stops where one child
    # does (a child whose own share passes the limit may stop them sooner).
    heard = [text for _, _, texts in heard_two for text in texts]
    assert heard == [text for _, _, texts in heard_one for text in texts][: len(heard)]
    assert sum(count_tokens(text) for text in heard) <= 5_000


# ------------------------------------------------------------------ one child failing


def test_a_child_killed_mid_read_fails_the_read_and_stops_the_other(started: list[Any]) -> None:
    def kill_the_second(total: int, first: int, texts: list[str]) -> None:
        if first == 1:
            os.kill(started[1].pid, signal.SIGKILL)

    with pytest.raises(ExtractionError) as caught:
        extract_isolated(str(GEOTOPO), filename=GEOTOPO.name, processes=2, on_pages=kill_the_second, **LIMITS)
    assert str(caught.value) == LIMITS_MESSAGE
    assert started[0].returncode == -signal.SIGKILL  # stopped, not left to finish its share


def test_a_child_over_the_cpu_limit_fails_the_read_and_stops_the_other(tmp_path: Path, started: list[Any]) -> None:
    # 40 pages in batches of 8: page 30 (the second child's) costs ~3.6 s of CPU, the rest nothing.
    path = tmp_path / "heavy.pdf"
    path.write_bytes(_pages_pdf({30: _operators(4 * MB)}, count=40))
    one, _ = _read(path, 1, cpu_seconds=1)
    two, heard = _read(path, 2, cpu_seconds=1)
    assert two == one == LIMITS_MESSAGE
    assert len(started) == 3 and started[2].returncode == -signal.SIGXCPU
    assert_contiguous_in_order(heard)


@pytest.mark.parametrize(
    "limit",
    [{"timeout": 0.5}, {"cpu_seconds": 1}, {"memory_bytes": 64 * MB}],
    ids=["wall-time", "cpu", "memory"],
)
def test_a_limit_both_children_pass_gives_the_limits_message(limit: dict[str, Any], started: list[Any]) -> None:
    assert _read(GEOTOPO, 2, **limit)[0] == LIMITS_MESSAGE
    assert len(started) == 2


def test_output_past_the_cap_of_both_children_together_stops_them(
    monkeypatch: pytest.MonkeyPatch, started: list[Any]
) -> None:
    # Each child alone writes less than this (GeoTopo's pages are ~180 KB of JSON lines, about
    # half each), both together more.
    monkeypatch.setattr(isolation, "MAX_OUTPUT_BYTES", 120_000)
    assert _read(GEOTOPO, 2)[0] == LIMITS_MESSAGE
    assert len(started) == 2


def test_an_error_in_the_listener_stops_both_children_and_reaches_the_caller(started: list[Any]) -> None:
    def refuse(total: int, first: int, texts: list[str]) -> None:
        raise RuntimeError("the database is away")

    with pytest.raises(RuntimeError, match="database is away"):
        extract_isolated(str(GEOTOPO), filename=GEOTOPO.name, processes=2, on_pages=refuse, **LIMITS)
    assert len(started) == 2


# ------------------------------------------------------------------ whole-document checks


def test_every_page_failing_gives_the_first_pages_error(tmp_path: Path, mode: str) -> None:
    path = tmp_path / "nested.pdf"
    path.write_bytes(_pages_pdf({number: _nested(number) for number in range(1, 6)}, count=5))
    assert _read(path, 2)[0] == _read(path, 1)[0] == NESTED_PDF_MESSAGE


def test_one_failing_page_leaves_the_others(tmp_path: Path, mode: str) -> None:
    path = tmp_path / "one-bad-page.pdf"
    path.write_bytes(_pages_pdf({4: _nested(4)}, count=5))
    result, heard = _read(path, 2)
    assert result == _read(path, 1)[0]
    assert [bool(page) for page in result.pages] == [True, True, True, False, True]  # type: ignore[attr-defined]
    assert_contiguous_in_order(heard, result.pages)  # type: ignore[attr-defined]


@pytest.mark.parametrize("case", CASES, ids=[case.id for case in CASES])
def test_a_hostile_file_gives_the_same_message_to_two_children(
    case: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(isolation, "BATCH_PAGES", 1)  # split even the short ones
    path = tmp_path / case.filename
    case.make(path)
    options = {
        "memory_bytes": 512 * MB,
        "cpu_seconds": case.settings.get("MASSCER_EXTRACT_CPU_SECONDS", 10),
        "max_pages": case.settings.get("MASSCER_MAX_PAGES", 2000),
    }
    assert _read(path, 2, **options)[0] == _read(path, 1, **options)[0]


# ------------------------------------------------------------------ the pure parts


def test_the_shares_deal_every_page_once_in_batches() -> None:
    shares = [Share(index, 2, batch=8).pages(40) for index in range(2)]
    assert shares[0] == [*range(1, 9), *range(17, 25), *range(33, 41)]
    assert shares[1] == [*range(9, 17), *range(25, 33)]
    assert [Share(index, 2, batch=8).pages(31) for index in range(2)] == [list(range(1, 32)), []]


def test_the_merge_hands_on_pages_in_order_once() -> None:
    heard: list[tuple[int, int, list[str]]] = []
    merged = InOrder(lambda *batch: heard.append(batch))
    merged.add(4, 3, ["c"])
    merged.add(4, 4, ["d"])
    assert heard == []
    merged.add(4, 1, ["a", "b"])
    assert heard == [(4, 1, ["a", "b", "c", "d"])] and merged.complete
    with pytest.raises(BadReport):
        merged.add(4, 2, ["b"])


def test_the_combined_checks_follow_the_first_failing_page_and_the_scan_rule() -> None:
    failing = [ShareStats(2, 0, 0, 0, 4, "fourth"), ShareStats(2, 0, 0, 0, 2, "second")]
    assert document_error(failing, 4) == "second"
    labels_on_images = [ShareStats(2, 2, 8, 2), ShareStats(2, 2, 8, 1)]
    assert document_error(labels_on_images, 4) == NO_TEXT_PDF_MESSAGE
    enough_text = [ShareStats(2, 2, 30, 2), ShareStats(2, 2, 10, 2)]
    assert document_error(enough_text, 4) is None


def test_stats_that_are_not_a_childs_are_refused() -> None:
    stats = ShareStats(3, 2, 120, 0, 3, "The file could not be read as a PDF: x.")
    assert ShareStats.from_json(stats.to_json()) == stats
    for bad in ({}, {**stats.to_json(), "pages": -1}, {**stats.to_json(), "failure": None}, "stats"):
        with pytest.raises(ValueError):
            ShareStats.from_json(bad)


# ------------------------------------------------------------------ PDFs built for the tests


def _operators(size: int) -> bytes:
    """A compressed content stream of ``size`` bytes of text operators (costly to read)."""
    data = zlib.compress(b"BT /F1 12 Tf 72 712 Td (A) Tj ET\n" * (size // 34), 1)
    return b"<< /Length %d /Filter /FlateDecode >>\nstream\n%s\nendstream" % (len(data), data)


def _nested(number: int) -> bytes:
    """Page ``number``'s text inside arrays nested too deeply for any reader."""
    depth = 100_000
    data = b"BT /F1 12 Tf " + b"[" * depth + b"(page %d)" % number + b"]" * depth + b" TJ ET"
    return b"<< /Length %d >>\nstream\n%s\nendstream" % (len(data), data)


def _text(number: int) -> bytes:
    data = b"BT /F1 12 Tf 72 712 Td (Page %d says hello to the parallel reader) Tj ET" % number
    return b"<< /Length %d >>\nstream\n%s\nendstream" % (len(data), data)


def _pages_pdf(special: dict[int, bytes], *, count: int) -> bytes:
    """``count`` pages, each with its own content stream: ``special[n]`` for page n, else a
    line of text naming the page. Objects: 1 catalog, 2 page tree, 3 font, then content and
    page of each page in turn."""
    objects = [
        b"<< /Type /Catalog /Pages 2 0 R >>",
        b"",
        b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>",
    ]
    kids = []
    for number in range(1, count + 1):
        objects.append(special.get(number) or _text(number))
        objects.append(
            b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] "
            b"/Resources << /Font << /F1 3 0 R >> >> /Contents %d 0 R >>" % len(objects)
        )
        kids.append(b"%d 0 R" % len(objects))
    objects[1] = b"<< /Type /Pages /Kids [%s] /Count %d >>" % (b" ".join(kids), count)
    return _pdf(objects)
