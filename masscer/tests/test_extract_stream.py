"""The isolated extraction child reports pages as it reads them (#17.3), under every limit it had."""

from __future__ import annotations

from pathlib import Path

import pytest

from masscer.lib.extract import ExtractionError, extract_file, extract_isolated, isolation

SAMPLES = Path(__file__).resolve().parents[3] / "shared" / "samples" / "pdf"
LIMITS = {"max_bytes": 50 * 1024 * 1024, "max_pages": 2000}


def test_the_child_reports_each_page_in_order_before_it_ends() -> None:
    path = SAMPLES / "pdflatex-4-pages.pdf"
    heard: list[tuple[int, int, list[str]]] = []
    result = extract_isolated(
        str(path), filename=path.name, on_pages=lambda *batch: heard.append(batch), **LIMITS
    )
    assert [(total, first) for total, first, _ in heard] == [(4, 1), (4, 2), (4, 3), (4, 4)]
    assert [text for _, _, texts in heard for text in texts] == result.pages
    assert result == extract_file(str(path), filename=path.name, **LIMITS)


def test_a_text_file_is_reported_in_one_batch(tmp_path: Path) -> None:
    path = tmp_path / "notes.md"
    path.write_text("# Refunds\n\nWithin 14 days.\n", encoding="utf-8")
    heard: list[tuple[int, int, list[str]]] = []
    result = extract_isolated(str(path), filename=path.name, on_pages=lambda *b: heard.append(b), **LIMITS)
    assert heard == [(1, 1, result.pages)]


def test_the_token_limit_stops_the_child_after_the_pages_within_it() -> None:
    path = SAMPLES / "GeoTopo-komprimiert.pdf"
    heard: list[int] = []
    with pytest.raises(ExtractionError, match="more than 5,000 tokens"):
        extract_isolated(
            str(path), filename=path.name, max_tokens=5_000, on_pages=lambda _t, first, _x: heard.append(first),
            **LIMITS,
        )  # fmt: skip
    # About 480 tokens a page: the pages before the limit were heard, none after it.
    assert 5 <= len(heard) <= 15 and heard == list(range(1, len(heard) + 1))


def test_output_past_the_cap_stops_the_child(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(isolation, "MAX_OUTPUT_BYTES", 20_000)
    path = SAMPLES / "GeoTopo-komprimiert.pdf"
    with pytest.raises(ExtractionError, match="time/memory limits"):
        extract_isolated(str(path), filename=path.name, **LIMITS)


def test_an_error_in_the_listener_stops_the_child_and_reaches_the_caller() -> None:
    path = SAMPLES / "GeoTopo-komprimiert.pdf"

    def refuse(total: int, first: int, texts: list[str]) -> None:
        raise RuntimeError("the database is away")

    with pytest.raises(RuntimeError, match="database is away"):
        extract_isolated(str(path), filename=path.name, on_pages=refuse, **LIMITS)
