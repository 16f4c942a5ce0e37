"""HTML extraction with the standard library's parser: the visible text (scripts, styles and
<head> dropped), headings as Markdown lines, and the title (<title>, else the first <h1>)."""

from __future__ import annotations

import re
from html.parser import HTMLParser

from .common import Extracted, _clean_title, _stem, clean_text
from .text import _read_text


def _extract_html(
    path: str, filename: str, max_bytes: int, max_pages: int
) -> Extracted:
    text, title = html_to_text(_read_text(path))
    return Extracted(
        kind="html",
        pages=[clean_text(text)],
        title=_clean_title(title, _stem(filename)),
    )


_SKIPPED = frozenset({"script", "style", "head", "noscript", "template", "svg"})
_BLOCKS = frozenset(
    {
        "address", "article", "aside", "blockquote", "body", "caption", "dd", "details",
        "dialog", "div", "dl", "dt", "fieldset", "figcaption", "figure", "footer", "form",
        "header", "hr", "html", "li", "main", "nav", "ol", "p", "pre", "section", "summary",
        "table", "tbody", "tfoot", "thead", "tr", "ul",
    }
)  # fmt: skip
_HEADINGS = {f"h{level}": level for level in range(1, 7)}


class _TextBuilder:
    """Accumulates HTML text with collapsed whitespace and at most one blank line in a row."""

    def __init__(self) -> None:
        self.parts: list[str] = []
        self.trailing_newlines = 2  # the start of the text counts as after a block

    def add(self, text: str, *, preformatted: bool) -> None:
        if not preformatted:
            text = re.sub(r"\s+", " ", text)
            if self.trailing_newlines or (self.parts and self.parts[-1].endswith(" ")):
                text = text.lstrip(" ")
        if text:
            self.parts.append(text)
            self.trailing_newlines = len(text) - len(text.rstrip("\n"))

    def newline(self, count: int) -> None:
        if self.parts:
            self.parts[-1] = self.parts[-1].rstrip(" ")
        missing = count - self.trailing_newlines
        if missing > 0 and self.parts:
            self.parts.append("\n" * missing)
            self.trailing_newlines = count

    def text(self) -> str:
        return "".join(self.parts).strip("\n ")


class _HTMLText(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.out = _TextBuilder()
        self.skipping: dict[str, int] = {}
        self.pre_depth = 0
        self.title_parts: list[str] | None = None
        self.title = ""
        self.first_h1: list[str] | None = None
        self.h1_text = ""
        self.row_cells = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "body":
            # An unclosed <head> ends where <body> starts.
            self.skipping.pop("head", None)
        if tag in _SKIPPED:
            self.skipping[tag] = self.skipping.get(tag, 0) + 1
        elif tag == "title" and not self.title:
            self.title_parts = []
        if self._skipping():
            return
        self._open_block(tag)

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if not self._skipping():
            self._open_block(tag)

    def _open_block(self, tag: str) -> None:
        if tag == "br":
            self.out.newline(1)
        elif tag in _HEADINGS:
            self.out.newline(2)
            self.out.add("#" * _HEADINGS[tag] + " ", preformatted=True)
            if tag == "h1" and not self.h1_text:
                self.first_h1 = []
        elif tag == "li":
            self.out.newline(1)
            self.out.add("- ", preformatted=True)
        elif tag == "tr":
            self.out.newline(1)
            self.row_cells = 0
        elif tag in ("td", "th"):
            if self.row_cells:
                self.out.add(" | ", preformatted=True)
            self.row_cells += 1
        elif tag == "pre":
            self.out.newline(2)
            self.pre_depth += 1
        elif tag in _BLOCKS:
            self.out.newline(2 if tag in ("p", "blockquote", "table", "hr") else 1)

    def handle_endtag(self, tag: str) -> None:
        if tag in _SKIPPED and self.skipping.get(tag):
            self.skipping[tag] -= 1
            if not self.skipping[tag]:
                del self.skipping[tag]
            return
        if tag == "title" and self.title_parts is not None:
            self.title = " ".join("".join(self.title_parts).split())
            self.title_parts = None
        if self._skipping():
            return
        if tag in _HEADINGS:
            if self.first_h1 is not None and tag == "h1":
                self.h1_text = " ".join("".join(self.first_h1).split())
                self.first_h1 = None
            self.out.newline(2)
        elif tag == "pre":
            self.pre_depth = max(0, self.pre_depth - 1)
            self.out.newline(2)
        elif tag in _BLOCKS:
            self.out.newline(2 if tag in ("p", "blockquote", "table") else 1)

    def handle_data(self, data: str) -> None:
        if self.title_parts is not None:
            self.title_parts.append(data)
            return
        if self._skipping():
            return
        if self.first_h1 is not None:
            self.first_h1.append(data)
        self.out.add(data, preformatted=self.pre_depth > 0)

    def _skipping(self) -> bool:
        return bool(self.skipping)


def html_to_text(html: str) -> tuple[str, str]:
    """(visible text, title) of an HTML document; scripts, styles and <head> are dropped."""
    parser = _HTMLText()
    parser.feed(html)
    parser.close()
    return parser.out.text(), parser.title or parser.h1_text
