"""Extraction of untrusted files in a child interpreter limited in CPU time, memory and wall
time, so a hostile or pathological file cannot take a Celery worker down. Celery prefork workers
are daemonic and may not use ``multiprocessing``, hence a plain ``subprocess``.

The parent half (``extract_isolated``, here) starts ``__main__.py`` of this package as a script;
the child half (``child.child_main``) applies the limits, runs ``core.extract_file`` and writes
JSON lines on stdout: one ``{"total", "first", "pages"}`` line per page as it is read, then the verdict
(``{"ok": true, "kind", "title", "tokens"}`` or ``{"ok": false, "error"}``). The parent reads
them as they come (``on_pages`` hears each page) under the same wall-time limit, and caps what
it accepts (``MAX_OUTPUT_BYTES``), so streaming changes no limit.

A long PDF can be read by several children at once (``processes``), each under the same limits
and reading a share of the pages (``shares``): ``{"opened": total}`` once the file is open, the
page lines (with each page's tokens when counted), then a verdict carrying the figures the
whole-document checks need (``{"ok": true, "kind", "title", "stats"}``). The parent merges the
pages into document order and runs those checks on the figures (``shares.document_error``);
the first child to fail stops the others, and its error is the result.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

from .common import HEAD_BYTES, LIMITS_MESSAGE, Extracted, ExtractionError, PageSink
from .core import _check_size, _file_size, detect_kind
from .lines import LineReader
from .shares import BATCH_PAGES, BadReport, InOrder, Share, ShareStats, document_error, splits

log = logging.getLogger(__name__)

# What the child runs; see ``_child_command``.
_CHILD_SCRIPT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "__main__.py")
INTERNAL_MESSAGE = "The file could not be processed (internal error)."
# The most the parent reads from the children of one file together: the text of the largest
# document the token limit lets through, as ASCII-escaped JSON, fits with room to spare; past
# it the children are stopped.
MAX_OUTPUT_BYTES = 256 * 1024 * 1024
# A PDF this large starts all its children at once (it is very likely long enough to split);
# a smaller one starts one child, and the others only once that child has counted enough pages
# (``shares.splits``), so a short PDF costs one process start, as with ``processes=1``.
EAGER_SPLIT_BYTES = 512 * 1024


def extract_isolated(
    path: str,
    *,
    filename: str,
    max_bytes: int,
    max_pages: int,
    cpu_seconds: int = 120,
    memory_bytes: int = 2 * 1024**3,
    timeout: float = 300,
    max_tokens: int | None = None,
    on_pages: PageSink | None = None,
    processes: int = 1,
) -> Extracted:
    """Run ``extract_file`` in a child interpreter limited in CPU time, memory and wall time.

    Pass ``max_tokens`` to have the child count the text under the same limits (an over-long
    document is refused there, and ``Extracted.tokens`` spares the caller a second count).
    ``on_pages(total, first, texts)`` hears the pages while the child reads them (see
    ``core.extract_file``: they are final only if this returns); an exception it raises stops
    the child and comes out of this call.

    With ``processes`` > 1 a long PDF is read by that many children at once, each under all
    the limits above, each reading an interleaved share of the pages (see ``shares``); the
    result, the errors and what ``on_pages`` hears (contiguous pages in document order) are
    those of one child, only sooner. One child failing stops the others."""
    # Obvious rejections need no process.
    size = _file_size(path)
    _check_size(size, max_bytes)
    command = functools.partial(
        _child_command,
        path,
        filename=filename,
        max_bytes=max_bytes,
        max_pages=max_pages,
        cpu_seconds=cpu_seconds,
        memory_bytes=memory_bytes,
        max_tokens=max_tokens,
    )
    with _Children(time.monotonic() + timeout) as children:
        if processes > 1 and _is_pdf(path, filename):
            eager = size >= EAGER_SPLIT_BYTES
            return _follow_shares(children, command, processes, on_pages, max_tokens, eager=eager)
        children.start(command())
        return _follow_child(children, on_pages)


def _is_pdf(path: str, filename: str) -> bool:
    """What the child will see, from the head bytes alone (the parent never parses the PDF)."""
    with open(path, "rb") as handle:
        head = handle.read(HEAD_BYTES)
    try:
        return detect_kind(filename, head) == "pdf"
    except ExtractionError:
        return False  # the child gives the message, as ever


class _Children:
    """The extraction children of one file, their output and their common deadline; leaving
    the block kills and reaps any that still run (one failing stops the others)."""

    def __init__(self, deadline: float) -> None:
        self.deadline = deadline
        self.procs: list[subprocess.Popen[bytes]] = []
        self.finished: set[int] = set()
        self.lines = LineReader(limit=MAX_OUTPUT_BYTES)

    def __enter__(self) -> _Children:
        return self

    def __exit__(self, *exc_info: object) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.kill()
        for proc in self.procs:
            proc.wait()
            for pipe in (proc.stdout, proc.stderr):
                if pipe is not None:
                    pipe.close()
        self.lines.close()

    def __len__(self) -> int:
        return len(self.procs)

    def start(self, command: list[str]) -> None:
        try:
            proc = subprocess.Popen(
                command, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE
            )
        except OSError as exc:
            log.error("could not start the extraction process: %s", exc)
            raise ExtractionError(INTERNAL_MESSAGE) from None
        assert proc.stdout is not None and proc.stderr is not None
        self.lines.add(len(self.procs), proc.stdout.fileno(), proc.stderr.fileno())
        self.procs.append(proc)

    def next_message(self) -> tuple[int, dict[str, Any]]:
        """(child, its next message); raises what a child that dies or passes a limit means."""
        while True:
            try:
                key, line = self.lines.next_line(self.deadline)
            except TimeoutError:
                raise ExtractionError(LIMITS_MESSAGE) from None
            except OverflowError:
                log.warning("extraction children wrote more than %d bytes", MAX_OUTPUT_BYTES)
                raise ExtractionError(LIMITS_MESSAGE) from None
            if line is not None:
                return key, _message(line)
            if key not in self.finished:  # end of output: the child died before its verdict
                _wait(self.procs[key], self.deadline)
                self.lines.drain_stderr(key)
                raise _child_death(self.procs[key].returncode, self.lines.stderr_tail(key))

    def finish(self, key: int) -> None:
        """The child gave its verdict: let it exit."""
        self.finished.add(key)
        _wait(self.procs[key], self.deadline)


def _message(line: bytes) -> dict[str, Any]:
    message = _parse_line(line)
    if message is None:
        log.warning("extraction child wrote an unreadable line: %r", line[:200])
        raise ExtractionError(INTERNAL_MESSAGE)
    return message


def _follow_child(children: _Children, on_pages: PageSink | None) -> Extracted:
    """Read the one child's lines until its verdict (or until it dies or runs out of time)."""
    merged = InOrder(on_pages)
    while True:
        key, message = children.next_message()
        if "pages" in message:
            _add_pages(merged, message)
            continue
        children.finish(key)
        return _verdict(message, merged.pages)


def _follow_shares(
    children: _Children,
    command: Callable[..., list[str]],
    count: int,
    on_pages: PageSink | None,
    max_tokens: int | None,
    *,
    eager: bool,
) -> Extracted:
    """Start the first child and, when the PDF is long enough (or at once, ``eager``), the
    others; merge their pages in order until every child has given its verdict."""
    shares = [Share(index, count, BATCH_PAGES) for index in range(count)]
    for share in shares if eager else shares[:1]:
        children.start(command(share=share))
    merged = InOrder(on_pages, max_tokens)
    verdicts: dict[int, dict[str, Any]] = {}
    while len(verdicts) < len(children):
        key, message = children.next_message()
        if "pages" in message:
            _add_pages(merged, message)
        elif "opened" in message:
            # The first child counted the pages: only now is it known whether to split.
            if len(children) == 1 and splits(_integer(message["opened"]), count, BATCH_PAGES):
                for share in shares[1:]:
                    children.start(command(share=share))
        elif not message.get("ok"):
            raise ExtractionError(str(message.get("error") or "The file could not be processed."))
        else:
            verdicts[key] = message
            children.finish(key)
    return _combined([verdicts[key] for key in sorted(verdicts)], merged, max_tokens)


def _add_pages(merged: InOrder, message: dict[str, Any]) -> None:
    try:
        total, first = _integer(message["total"]), _integer(message["first"])
        texts = [str(text) for text in message["pages"]]
        tokens = message.get("tokens")
        counts = None if tokens is None else [_integer(count) for count in tokens]
        merged.add(total, first, texts, counts)
    except (KeyError, TypeError, BadReport) as exc:
        log.warning("extraction child reported pages that do not fit: %s", exc)
        raise ExtractionError(INTERNAL_MESSAGE) from None


def _integer(value: object) -> int:
    if not isinstance(value, int) or isinstance(value, bool):
        raise TypeError(f"{value!r} is not an integer")
    return value


def _combined(verdicts: list[dict[str, Any]], merged: InOrder, max_tokens: int | None) -> Extracted:
    """The children's verdicts (the first child's first) and their pages as one result, or
    the whole-document check the PDF fails (``shares.document_error``)."""
    try:
        stats = [ShareStats.from_json(verdict.get("stats")) for verdict in verdicts]
        kind, title = str(verdicts[0]["kind"]), str(verdicts[0]["title"])
    except (KeyError, ValueError) as exc:
        log.warning("extraction children gave verdicts that do not fit: %s", exc)
        raise ExtractionError(INTERNAL_MESSAGE) from None
    if not merged.complete or merged.total is None:
        log.warning("extraction children left pages out: %d of %s", len(merged.pages), merged.total)
        raise ExtractionError(INTERNAL_MESSAGE)
    error = document_error(stats, merged.total)
    if error is not None:
        raise ExtractionError(error)
    tokens = merged.tokens if max_tokens is not None else None
    return Extracted(kind=kind, pages=merged.pages, title=title, tokens=tokens)


def _parse_line(line: bytes) -> dict[str, Any] | None:
    try:
        message = json.loads(line)
    except ValueError:
        return None
    return message if isinstance(message, dict) else None


def _wait(proc: subprocess.Popen[bytes], deadline: float) -> None:
    try:
        proc.wait(timeout=max(0.1, deadline - time.monotonic()))
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def _child_death(returncode: int, stderr_tail: bytes) -> ExtractionError:
    log.warning(
        "extraction child failed (code %s): %s", returncode, stderr_tail.decode("utf-8", "replace")
    )
    # Killed by a signal (SIGXCPU, SIGKILL, SIGSEGV...) or out of address space.
    if returncode < 0 or b"MemoryError" in stderr_tail:
        return ExtractionError(LIMITS_MESSAGE)
    return ExtractionError(INTERNAL_MESSAGE)


def _verdict(message: dict[str, Any], pages: list[str]) -> Extracted:
    if not message.get("ok"):
        raise ExtractionError(str(message.get("error") or "The file could not be processed."))
    return Extracted(
        kind=message["kind"], pages=pages, title=message["title"], tokens=message.get("tokens")
    )


def _child_command(
    path: str,
    *,
    filename: str,
    max_bytes: int,
    max_pages: int,
    cpu_seconds: int,
    memory_bytes: int,
    max_tokens: int | None = None,
    share: Share | None = None,
) -> list[str]:
    # Run __main__.py as a script rather than ``-m masscer.lib.extract``: -m imports the parent
    # package ``masscer``, whose __init__ loads Celery and Django settings (~0.2 s and a lot
    # of memory per document). -P keeps this package's folder off sys.path (its docx.py and
    # html.py would shadow python-docx and the standard library's html).
    command = [
        sys.executable,
        "-P",
        _CHILD_SCRIPT,
        f"--filename={filename.replace(chr(0), '')}",  # argv cannot hold NUL
        f"--max-bytes={max_bytes}",
        f"--max-pages={max_pages}",
        f"--cpu-seconds={cpu_seconds}",
        f"--memory-bytes={memory_bytes}",
        f"--path={os.path.abspath(path)}",
    ]
    if max_tokens is not None:
        command.append(f"--max-tokens={max_tokens}")
    if share is not None:
        command += [f"--share={share.index}", f"--shares={share.count}", f"--batch={share.batch}"]
    return command
