"""Token counting and chunking: properties over generated documents plus real samples."""

from __future__ import annotations

import itertools
import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from masscer.lib.extract import extract_file
from masscer.lib.tokens import (
    ChunkSpec,
    chunk_pages,
    count_tokens,
    encoding,
    join_pages,
    split_text,
)

SAMPLES = Path(__file__).resolve().parents[3] / "shared" / "samples" / "pdf"

# ------------------------------------------------------------------ generated documents

_WORDS = st.sampled_from(
    [
        "the", "token", "Überlagerung", "naïve", "数学", "😀", "x=y+1", "e.g.", "Dr.",
        "end.", "why?", "yes!", '"quoted."', "1.2", "-", "--", "<|endoftext|>", "\t",
    ]
)  # fmt: skip
_SEPARATORS = st.sampled_from(
    [" ", " ", " ", "\n", "\n\n", "  ", "\n \n", ". ", "\r\n"]
)
_LINES = st.sampled_from(
    ["\n# Heading\n", "\n## Sub heading\n\n", "\n2.1 Numbered heading\n"]
)


@st.composite
def _page(draw: st.DrawFn) -> str:
    parts: list[str] = []
    for _ in range(draw(st.integers(0, 60))):
        kind = draw(st.integers(0, 9))
        if kind == 0:
            parts.append(draw(_LINES))
        elif kind == 1:
            # A long run without whitespace forces hard cuts at token boundaries.
            parts.append(draw(st.sampled_from("ab9é€-")) * draw(st.integers(20, 400)))
        elif kind == 2:
            parts.append(draw(st.text(min_size=1, max_size=20)))
        else:
            parts.append(draw(_WORDS))
        parts.append(draw(_SEPARATORS))
    return "".join(parts)


_PAGES = st.lists(_page(), min_size=0, max_size=6)
_FAST = settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)


def _page_of_reference(offset: int, pages: list[str]) -> int:
    """Independent page lookup: walk the pages and their "\n\n" separators."""
    position = 0
    for number, page in enumerate(pages, start=1):
        if offset < position + len(page) + 2:
            return number
        position += len(page) + 2
    return len(pages)


def _assert_valid_chunks(
    pages: list[str], chunks: list[ChunkSpec], budget: int
) -> None:
    text, _ = join_pages(pages)
    if not text.strip():
        assert chunks == []
        return
    assert chunks, "non-blank text yields chunks"
    content_start = len(text) - len(text.lstrip())
    assert chunks[0].start == content_start
    assert chunks[-1].end == len(text) or not text[chunks[-1].end :].strip()
    for index, chunk in enumerate(chunks):
        assert chunk.index == index
        assert chunk.text == text[chunk.start : chunk.end]
        assert chunk.text.strip(), "no whitespace-only chunks"
        assert count_tokens(chunk.text) == chunk.token_count <= budget
        first = chunk.start + len(chunk.text) - len(chunk.text.lstrip())
        last = chunk.start + len(chunk.text.rstrip()) - 1
        assert chunk.first_page == _page_of_reference(first, pages)
        assert chunk.last_page == _page_of_reference(last, pages)
        assert 1 <= chunk.first_page <= chunk.last_page <= len(pages)
        assert not text[chunk.start].isspace()
    for previous, chunk in itertools.pairwise(chunks):
        assert previous.start < chunk.start, "each chunk starts later"
        assert previous.end < chunk.end, "each chunk makes progress"
        # Contiguous or overlapping; a gap may only be whitespace that did not fit.
        assert (
            chunk.start <= previous.end or not text[previous.end : chunk.start].strip()
        )


@_FAST
@given(pages=_PAGES, budget=st.integers(4, 120), overlap=st.integers(0, 40))
def test_chunks_fit_cover_and_locate_pages(
    pages: list[str], budget: int, overlap: int
) -> None:
    chunks = chunk_pages(pages, budget=budget, overlap=overlap)
    _assert_valid_chunks(pages, chunks, budget)


@_FAST
@given(pages=_PAGES, budget=st.integers(4, 120), overlap=st.integers(0, 40))
def test_chunking_is_deterministic(pages: list[str], budget: int, overlap: int) -> None:
    assert chunk_pages(pages, budget=budget, overlap=overlap) == chunk_pages(
        list(pages), budget=budget, overlap=overlap
    )


@_FAST
@given(text=_page(), budget=st.integers(4, 120))
def test_split_text_reproduces_text_within_budget(text: str, budget: int) -> None:
    pieces = split_text(text, budget=budget)
    assert "".join(pieces) == text
    assert all(piece and count_tokens(piece) <= budget for piece in pieces)


@settings(max_examples=40, deadline=None)
@given(text=st.text(max_size=3000))
def test_count_tokens_matches_tiktoken_for_small_text(text: str) -> None:
    assert count_tokens(text) == len(encoding().encode_ordinary(text))


# ------------------------------------------------------------------ unit tests


def test_join_pages_offsets() -> None:
    text, starts = join_pages(["ab", "", "cd"])
    assert text == "ab\n\n\n\ncd"
    assert starts == [0, 4, 6]
    assert text[starts[2] :] == "cd"


def test_count_tokens_handles_special_token_text() -> None:
    assert count_tokens("<|endoftext|>") > 1  # counted as plain text, never rejected


def test_empty_and_blank_documents_have_no_chunks() -> None:
    assert chunk_pages([]) == []
    assert chunk_pages(["", "  \n "]) == []
    assert split_text("", budget=10) == []


def test_small_pages_are_packed_together() -> None:
    pages = [f"Page {number} has a short line of text." for number in range(1, 11)]
    chunks = chunk_pages(pages, budget=800)
    assert len(chunks) == 1
    assert (chunks[0].first_page, chunks[0].last_page) == (1, 10)


def test_full_chunk_prefers_a_page_boundary() -> None:
    sentence = "This sentence is filler text for the chunker. "
    pages = [sentence * 40, sentence * 40, sentence * 40]  # about 400 tokens per page
    chunks = chunk_pages(pages, budget=800, overlap=0)
    _, starts = join_pages(pages)
    assert [chunk.start for chunk in chunks][:3] == starts


def test_overlap_is_about_the_requested_size() -> None:
    text = " ".join(
        f"Sentence number {number} says something." for number in range(600)
    )
    chunks = chunk_pages([text], budget=200, overlap=40)
    assert len(chunks) > 5
    for previous, chunk in itertools.pairwise(chunks):
        shared = count_tokens(text[chunk.start : previous.end])
        assert 15 <= shared <= 45


def test_heading_near_a_needed_break_starts_a_chunk() -> None:
    line = "A plain line of prose that keeps going without any structure at all\n"
    before = line * 45  # roughly 600 tokens, beyond half of the budget
    text = before + "# Results\n" + line * 80
    chunks = chunk_pages([text], budget=800, overlap=80)
    assert len(chunks) >= 2
    assert len(before) in [chunk.start for chunk in chunks]


def test_numbered_heading_is_a_break_point() -> None:
    line = "Eine Zeile deutscher Fließtext ohne besondere Struktur, immer weiter so\n"
    before = line * 40
    text = before + "3.3 Überlagerungen\n" + line * 80
    chunks = chunk_pages([text], budget=800)
    assert len(before) in [chunk.start for chunk in chunks]


def test_four_page_sample_chunks_carry_page_numbers() -> None:
    extracted = extract_file(
        str(SAMPLES / "pdflatex-4-pages.pdf"),
        filename="pdflatex-4-pages.pdf",
        max_bytes=50 * 1024 * 1024,
        max_pages=100,
    )
    chunks = chunk_pages(extracted.pages)
    _assert_valid_chunks(extracted.pages, chunks, 800)
    covered = {
        page
        for chunk in chunks
        for page in range(chunk.first_page, chunk.last_page + 1)
    }
    assert covered == {1, 2, 3, 4}


def test_long_line_without_whitespace_counts_and_chunks_in_bounded_time() -> None:
    text = "ab1/" * 1_250_000  # 5 MB, a single "word"
    began = time.perf_counter()
    total = count_tokens(text)
    chunks = chunk_pages([text], budget=800, overlap=80)
    elapsed = time.perf_counter() - began
    assert total > 0
    assert chunks[0].start == 0 and chunks[-1].end == len(text)
    assert all(chunk.token_count <= 800 for chunk in chunks)
    assert all(b.start <= a.end for a, b in itertools.pairwise(chunks))
    assert elapsed < 60


def test_split_text_prefers_paragraphs() -> None:
    paragraph = "Some words in a paragraph. " * 20
    text = "\n\n".join([paragraph] * 6)
    pieces = split_text(text, budget=300)
    assert "".join(pieces) == text
    assert all(piece.endswith("\n\n") for piece in pieces[:-1])


def test_budget_below_minimum_is_rejected() -> None:
    with pytest.raises(ValueError):
        chunk_pages(["text"], budget=3)
    with pytest.raises(ValueError):
        split_text("text", budget=2)
