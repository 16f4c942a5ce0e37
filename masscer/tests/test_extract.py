"""Text extraction: real sample PDFs, generated DOCX/HTML/text files and hostile inputs."""

from __future__ import annotations

import functools
import random
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from masscer.lib.extract import (
    Extracted,
    ExtractionError,
    clean_text,
    detect_kind,
    extract_file,
    extract_isolated,
    html_to_text,
)

SAMPLES = Path(__file__).resolve().parents[3] / "shared" / "samples" / "pdf"
MB = 1024 * 1024
LIMITS = {"max_bytes": 50 * MB, "max_pages": 2000}

# name -> expected page count, for the samples that have a text layer
TEXT_PDFS = {
    "minimal-document.pdf": 1,
    "002-trivial-libre-office-writer.pdf": 1,
    "pdflatex-4-pages.pdf": 4,
    "pdflatex-outline.pdf": 4,
    "google-doc-document.pdf": 1,
    "multicolumn.pdf": 3,
    "GeoTopo-komprimiert.pdf": 117,
}


def _extract(path: Path, filename: str | None = None, **limits: int) -> Extracted:
    options = {**LIMITS, **limits}
    return extract_file(str(path), filename=filename or path.name, **options)


@functools.cache
def _sample(name: str) -> Extracted:
    """Sample PDFs are extracted once per test run (GeoTopo alone takes seconds)."""
    return _extract(SAMPLES / name)


def _write(tmp_path: Path, name: str, data: bytes | str) -> Path:
    path = tmp_path / name
    if isinstance(data, str):
        path.write_text(data, encoding="utf-8")
    else:
        path.write_bytes(data)
    return path


# ------------------------------------------------------------------ sample PDFs


@pytest.mark.parametrize(("name", "page_count"), sorted(TEXT_PDFS.items()))
def test_sample_pdfs_extract_per_page(name: str, page_count: int) -> None:
    result = _sample(name)
    assert result.kind == "pdf"
    assert len(result.pages) == page_count
    assert "".join(result.pages).strip()
    assert result.title
    assert all("\x00" not in page and "\r" not in page for page in result.pages)


def test_pdf_title_comes_from_metadata() -> None:
    assert _sample("GeoTopo-komprimiert.pdf").title == "Geometrie und Topologie"
    assert _sample("minimal-document.pdf").title == "minimal-document"


def test_four_page_pdf_keeps_text_on_each_page() -> None:
    pages = _sample("pdflatex-4-pages.pdf").pages
    assert all(len(page.strip()) > 100 for page in pages)


def test_password_protected_pdf_is_refused_clearly() -> None:
    with pytest.raises(ExtractionError, match="password protected"):
        _extract(SAMPLES / "libreoffice-writer-password.pdf")


def test_image_only_pdf_has_no_extractable_text() -> None:
    with pytest.raises(ExtractionError, match="No extractable text") as caught:
        _extract(SAMPLES / "imagemagick-images.pdf")
    assert "scan" in str(caught.value)


def test_isolated_extraction_matches_in_process() -> None:
    path = SAMPLES / "pdflatex-4-pages.pdf"
    isolated = extract_isolated(str(path), filename=path.name, **LIMITS)
    assert isolated == _sample(path.name)


def test_isolated_extraction_reports_the_same_error() -> None:
    path = SAMPLES / "libreoffice-writer-password.pdf"
    with pytest.raises(ExtractionError) as in_process:
        _extract(path)
    with pytest.raises(ExtractionError) as isolated:
        extract_isolated(str(path), filename=path.name, **LIMITS)
    assert str(isolated.value) == str(in_process.value)


def test_isolated_extraction_enforces_the_memory_limit(tmp_path: Path) -> None:
    # Reading and decoding 20 MB of text needs well over the 48 MB address space allowed.
    path = _write(tmp_path, "huge.txt", b"word " * (4 * MB))
    with pytest.raises(ExtractionError, match="time/memory limits"):
        extract_isolated(str(path), filename=path.name, memory_bytes=48 * MB, **LIMITS)


def test_isolated_extraction_enforces_the_cpu_limit() -> None:
    path = SAMPLES / "GeoTopo-komprimiert.pdf"  # needs about 3 s of CPU
    with pytest.raises(ExtractionError, match="time/memory limits"):
        extract_isolated(str(path), filename=path.name, cpu_seconds=1, **LIMITS)


def test_isolated_extraction_enforces_the_timeout() -> None:
    path = SAMPLES / "GeoTopo-komprimiert.pdf"
    with pytest.raises(ExtractionError, match="time/memory limits"):
        extract_isolated(str(path), filename=path.name, timeout=0.5, **LIMITS)


# ------------------------------------------------------------------ limits and bad files


def test_over_max_pages_is_refused() -> None:
    with pytest.raises(ExtractionError, match=r"The PDF has 4 pages; the limit is 2\."):
        _extract(SAMPLES / "pdflatex-4-pages.pdf", max_pages=2)


def test_over_max_bytes_is_refused(tmp_path: Path) -> None:
    path = _write(tmp_path, "big.txt", "word " * 50_000)
    with pytest.raises(
        ExtractionError, match=r"The file is 0\.2 MB; the limit is 0\.1 MB\."
    ):
        _extract(path, max_bytes=MB // 10)
    with pytest.raises(ExtractionError, match="the limit is"):
        extract_isolated(
            str(path), filename="big.txt", max_bytes=MB // 10, max_pages=10
        )


def test_empty_file_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ExtractionError, match="The file is empty"):
        _extract(_write(tmp_path, "empty.pdf", b""))


def test_unsupported_extension_is_refused(tmp_path: Path) -> None:
    path = _write(tmp_path, "notes.xyz", "some text")
    with pytest.raises(
        ExtractionError, match=r"Unsupported file type '\.xyz'\. Accepted: PDF"
    ):
        _extract(path)


def test_binary_named_txt_is_refused(tmp_path: Path) -> None:
    path = _write(tmp_path, "data.txt", random.Random(7).randbytes(4096))
    with pytest.raises(ExtractionError, match="does not look like text"):
        _extract(path)


def test_pdf_renamed_txt_is_read_as_pdf(tmp_path: Path) -> None:
    path = _write(
        tmp_path, "report.txt", (SAMPLES / "minimal-document.pdf").read_bytes()
    )
    result = _extract(path)
    assert result.kind == "pdf"
    assert result.pages[0].strip()


@pytest.mark.parametrize("name", ["pdflatex-4-pages.pdf", "GeoTopo-komprimiert.pdf"])
def test_truncated_pdf_is_refused(tmp_path: Path, name: str) -> None:
    data = (SAMPLES / name).read_bytes()
    path = _write(tmp_path, name, data[: len(data) // 2])
    with pytest.raises(ExtractionError, match="could not be read as a PDF"):
        _extract(path)


def test_random_bytes_after_pdf_header_are_refused(tmp_path: Path) -> None:
    path = _write(
        tmp_path, "noise.pdf", b"%PDF-1.4\n" + random.Random(3).randbytes(20_000)
    )
    with pytest.raises(ExtractionError, match="could not be read as a PDF"):
        _extract(path)


def test_pdf_extension_without_pdf_header_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ExtractionError, match="could not be read as a PDF"):
        _extract(_write(tmp_path, "fake.pdf", "just text"))


def test_missing_file_is_an_extraction_error(tmp_path: Path) -> None:
    with pytest.raises(ExtractionError, match="could not be opened"):
        _extract(tmp_path / "missing.pdf")


@settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    flips=st.lists(st.tuples(st.integers(0, 16_977), st.integers(0, 255)), max_size=40)
)
def test_corrupted_pdf_never_raises_anything_else(
    tmp_path: Path, flips: list[tuple[int, int]]
) -> None:
    data = bytearray((SAMPLES / "minimal-document.pdf").read_bytes())
    for offset, value in flips:
        data[offset % len(data)] = value
    path = _write(tmp_path, "mutated.pdf", bytes(data))
    try:
        result = _extract(path)
    except ExtractionError as error:
        assert str(error)
    else:
        assert "".join(result.pages).strip()


# ------------------------------------------------------------------ DOCX


def _make_docx(path: Path) -> None:
    import docx

    document = docx.Document()
    document.core_properties.title = "Quarterly Report"
    document.add_heading("Introduction", level=1)
    document.add_paragraph("The first paragraph explains the purpose.")
    document.add_heading("Details", level=2)
    document.add_paragraph("A second paragraph with more detail.")
    table = document.add_table(rows=2, cols=2)
    table.cell(0, 0).text = "Name"
    table.cell(0, 1).text = "Value"
    table.cell(1, 0).text = "Alpha"
    table.cell(1, 1).text = "42"
    document.add_paragraph("Closing words after the table.")
    document.save(str(path))


def test_docx_headings_paragraphs_and_tables(tmp_path: Path) -> None:
    path = tmp_path / "report.docx"
    _make_docx(path)
    result = _extract(path)
    assert result.kind == "docx"
    assert result.title == "Quarterly Report"
    assert len(result.pages) == 1
    text = result.pages[0]
    lines = text.splitlines()
    assert "# Introduction" in lines
    assert "## Details" in lines
    assert "Name | Value" in lines
    assert "Alpha | 42" in lines
    assert text.index("Alpha | 42") < text.index("Closing words")


def test_docx_detected_by_content_whatever_the_name(tmp_path: Path) -> None:
    path = tmp_path / "report.docx"
    _make_docx(path)
    head = path.read_bytes()[:8192]
    assert detect_kind("upload.bin", head) == "docx"


def test_broken_docx_is_refused(tmp_path: Path) -> None:
    path = _write(tmp_path, "broken.docx", b"PK\x03\x04" + b"\x00" * 200)
    with pytest.raises(ExtractionError, match="Word document"):
        _extract(path)


# ------------------------------------------------------------------ HTML, Markdown, text

HTML = """<!doctype html>
<html><head><title>My &amp; Page</title>
<style>body { color: red; }</style>
<script>alert(1)</script></head>
<body><h1>Welcome</h1><p>First&nbsp;paragraph with <b>bold</b>
text &lt;escaped&gt;.</p><noscript>enable js</noscript>
<ul><li>one</li><li>two</li></ul><script type="text/javascript">var x = "<p>";</script>
<table><tr><td>a</td><td>b</td></tr></table><pre>  keep
  indent</pre></body></html>"""


def test_html_drops_scripts_and_styles(tmp_path: Path) -> None:
    result = _extract(_write(tmp_path, "page.html", HTML))
    text = result.pages[0]
    assert result.kind == "html"
    assert result.title == "My & Page"
    assert "alert" not in text and "color" not in text and "var x" not in text
    assert "enable js" not in text
    assert "# Welcome" in text.splitlines()
    assert "First paragraph with bold text <escaped>." in text  # &nbsp; collapses
    assert "- one" in text.splitlines() and "- two" in text.splitlines()
    assert "a | b" in text
    assert "  keep\n  indent" in text


def test_html_without_closed_head_keeps_body() -> None:
    text, title = html_to_text("<html><head><title>T</title><body><p>Body text</p>")
    assert text == "Body text"
    assert title == "T"


def test_markdown_title_and_text(tmp_path: Path) -> None:
    path = _write(
        tmp_path, "notes.md", "Intro line\r\n\r\n# The Title\r\n\r\nBody\x00 text\n"
    )
    result = _extract(path)
    assert result.kind == "markdown"
    assert result.title == "The Title"
    assert result.pages == ["Intro line\n\n# The Title\n\nBody text\n"]


def test_plain_text_latin1_fallback(tmp_path: Path) -> None:
    result = _extract(_write(tmp_path, "alt.txt", "Grüße aus Köln".encode("latin-1")))
    assert result.kind == "text"
    assert result.pages == ["Grüße aus Köln"]
    assert result.title == "alt"


def test_utf16_text_with_bom(tmp_path: Path) -> None:
    result = _extract(_write(tmp_path, "wide.txt", "Hallo Welt".encode("utf-16")))
    assert result.pages == ["Hallo Welt"]


def test_whitespace_only_text_has_no_extractable_text(tmp_path: Path) -> None:
    with pytest.raises(ExtractionError, match="No extractable text"):
        _extract(_write(tmp_path, "blank.txt", " \n\n\t "))


def test_detect_kind_by_magic_then_extension() -> None:
    assert detect_kind("a.txt", b"%PDF-1.7\n...") == "pdf"
    assert detect_kind("a.MD", b"# hi") == "markdown"
    assert detect_kind("a.htm", b"<p>hi</p>") == "html"
    assert detect_kind("a.text", b"hi") == "text"
    with pytest.raises(ExtractionError, match="empty"):
        detect_kind("a.txt", b"")
    with pytest.raises(ExtractionError, match="no extension"):
        detect_kind("README", b"hello")


def test_clean_text_removes_nul_and_lone_surrogates() -> None:
    assert clean_text("a\x00b\r\nc\rd") == "ab\nc\nd"
    assert clean_text("x\ud800y") == "x\ufffdy"
    assert clean_text("ok \U0001f600") == "ok \U0001f600"


def test_a_docx_whose_xml_outgrows_the_memory_limit_is_reported_as_such(tmp_path: Path) -> None:
    # 400 MB of XML (1.1 MB zipped, within the expansion allowed for a 50 MB upload limit): libxml2
    # runs out of the 1 GiB allowed and says "unknown error", which is no damaged XML.
    import zipfile

    path = tmp_path / "big.docx"
    paragraph = b"<w:p><w:r><w:t>" + b"word " * 2000 + b"</w:t></w:r></w:p>"
    namespace = b'xmlns:w="http://schemas.openxmlformats.org/wordprocessingml/2006/main"'
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as package:
        package.writestr(
            "[Content_Types].xml",
            b'<?xml version="1.0"?><Types xmlns="http://schemas.openxmlformats.org/package/2006/content-types">'
            b'<Default Extension="rels" ContentType="application/vnd.openxmlformats-package.relationships+xml"/>'
            b'<Override PartName="/word/document.xml" ContentType="application/'
            b'vnd.openxmlformats-officedocument.wordprocessingml.document.main+xml"/></Types>',
        )
        package.writestr(
            "_rels/.rels",
            b'<?xml version="1.0"?><Relationships xmlns="http://schemas.openxmlformats.org/package/2006/relationships">'
            b'<Relationship Id="rId1" Type="http://schemas.openxmlformats.org/officeDocument/2006/relationships/'
            b'officeDocument" Target="word/document.xml"/></Relationships>',
        )
        with package.open("word/document.xml", "w", force_zip64=True) as xml:
            xml.write(b'<?xml version="1.0"?><w:document ' + namespace + b"><w:body>")
            block = paragraph * 100
            for _ in range(400 * MB // len(block)):
                xml.write(block)
            xml.write(b"</w:body></w:document>")
    with pytest.raises(ExtractionError, match="time/memory limits"):
        extract_isolated(str(path), filename=path.name, memory_bytes=1024 * MB, **LIMITS)
