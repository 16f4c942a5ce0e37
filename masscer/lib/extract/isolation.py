"""Extraction of untrusted files in a child interpreter limited in CPU time, memory and wall
time, so a hostile or pathological file cannot take a Celery worker down. Celery prefork workers
are daemonic and may not use ``multiprocessing``, hence a plain ``subprocess``.

The parent half (``extract_isolated``) starts ``__main__.py`` of this package as a script; the
child half (``_child_main``) applies the limits, runs ``core.extract_file`` and writes JSON lines
on stdout: one ``{"total", "first", "pages"}`` line per page as it is read, then the verdict
(``{"ok": true, "kind", "title", "tokens"}`` or ``{"ok": false, "error"}``). The parent reads
them as they come (``on_pages`` hears each page) under the same wall-time limit, and caps what
it accepts (``MAX_OUTPUT_BYTES``), so streaming changes no limit.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import subprocess
import sys
import time
from collections.abc import Sequence
from typing import Any

from .common import LIMITS_MESSAGE, Extracted, ExtractionError, PageSink, _short_reason
from .core import _check_size, _file_size, extract_file
from .lines import LineReader

log = logging.getLogger(__name__)

# What the child runs; see ``_child_command``.
_CHILD_SCRIPT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "__main__.py")
INTERNAL_MESSAGE = "The file could not be processed (internal error)."
# The most the parent reads from one child: the text of the largest document the token limit
# lets through, as ASCII-escaped JSON, fits with room to spare; past it the child is stopped.
MAX_OUTPUT_BYTES = 256 * 1024 * 1024


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
) -> Extracted:
    """Run ``extract_file`` in a child interpreter limited in CPU time, memory and wall time.

    Pass ``max_tokens`` to have the child count the text under the same limits (an over-long
    document is refused there, and ``Extracted.tokens`` spares the caller a second count).
    ``on_pages(total, first, texts)`` hears the pages while the child reads them (see
    ``core.extract_file``: they are final only if this returns); an exception it raises stops
    the child and comes out of this call."""
    # Obvious rejections need no process.
    _check_size(_file_size(path), max_bytes)
    command = _child_command(
        path,
        filename=filename,
        max_bytes=max_bytes,
        max_pages=max_pages,
        cpu_seconds=cpu_seconds,
        memory_bytes=memory_bytes,
        max_tokens=max_tokens,
    )
    try:
        proc = subprocess.Popen(
            command, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE
        )
    except OSError as exc:
        log.error("could not start the extraction process: %s", exc)
        raise ExtractionError(INTERNAL_MESSAGE) from None
    with proc:
        try:
            return _follow_child(proc, time.monotonic() + timeout, on_pages)
        finally:
            if proc.poll() is None:
                proc.kill()


def _follow_child(proc: subprocess.Popen[bytes], deadline: float, on_pages: PageSink | None) -> Extracted:
    """Read the child's lines until its verdict (or until it dies or runs out of time)."""
    assert proc.stdout is not None and proc.stderr is not None
    reader = LineReader(proc.stdout.fileno(), proc.stderr.fileno(), limit=MAX_OUTPUT_BYTES)
    pages: list[str] = []
    while True:
        try:
            line = reader.next_line(deadline)
        except TimeoutError:
            raise ExtractionError(LIMITS_MESSAGE) from None
        except OverflowError:
            log.warning("extraction child wrote more than %d bytes", MAX_OUTPUT_BYTES)
            raise ExtractionError(LIMITS_MESSAGE) from None
        if line is None:  # end of output: the child died before its verdict
            _wait(proc, deadline)
            raise _child_death(proc.returncode, reader.stderr_tail())
        message = _parse_line(line)
        if message is None:
            log.warning("extraction child wrote an unreadable line: %r", line[:200])
            raise ExtractionError(INTERNAL_MESSAGE)
        if "pages" in message:
            texts = [str(text) for text in message["pages"]]
            pages.extend(texts)
            if on_pages is not None:
                on_pages(int(message["total"]), int(message["first"]), texts)
            continue
        _wait(proc, deadline)
        return _verdict(message, pages)


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
    return command


def _apply_limits(cpu_seconds: int, memory_bytes: int) -> None:
    """Limit this (child) process before it opens the file. Done here rather than in
    preexec_fn because preexec_fn can deadlock when the parent process has threads."""
    import resource

    # SIGXCPU at the soft CPU limit; the hard limit (SIGKILL) a little later as a backstop.
    _set_limit(resource.RLIMIT_CPU, cpu_seconds, cpu_seconds + 5)
    _set_limit(resource.RLIMIT_AS, memory_bytes, memory_bytes)
    _set_limit(resource.RLIMIT_CORE, 0, 0)


def _set_limit(limit: int, soft: int, hard: int) -> None:
    import resource

    _, current_hard = resource.getrlimit(limit)
    if current_hard != resource.RLIM_INFINITY:
        hard = min(hard, current_hard)
    resource.setrlimit(limit, (min(soft, hard), hard))


def _child_main(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(
        description="Extract text from one file; JSON on stdout."
    )
    parser.add_argument("--path", required=True)
    parser.add_argument("--filename", required=True)
    parser.add_argument("--max-bytes", type=int, required=True)
    parser.add_argument("--max-pages", type=int, required=True)
    parser.add_argument("--cpu-seconds", type=int, default=120)
    parser.add_argument("--memory-bytes", type=int, default=2 * 1024**3)
    parser.add_argument("--max-tokens", type=int, default=None)
    args = parser.parse_args(argv)
    _apply_limits(args.cpu_seconds, args.memory_bytes)
    logging.basicConfig(level=logging.ERROR)  # pypdf warnings would only fill stderr
    payload = _child_payload(
        args.path, args.filename, args.max_bytes, args.max_pages, args.max_tokens
    )
    _write_line(payload)
    return 0


def _write_line(message: dict[str, Any]) -> None:
    sys.stdout.buffer.write(json.dumps(message).encode("ascii") + b"\n")
    sys.stdout.flush()


def _send_pages(total: int, first: int, texts: list[str]) -> None:
    _write_line({"total": total, "first": first, "pages": texts})


def _child_payload(
    path: str,
    filename: str,
    max_bytes: int,
    max_pages: int,
    max_tokens: int | None = None,
) -> dict[str, Any]:
    """The verdict line; the pages went out as they were read."""
    try:
        result = extract_file(
            path,
            filename=filename,
            max_bytes=max_bytes,
            max_pages=max_pages,
            max_tokens=max_tokens,
            on_pages=_send_pages,
        )
    except ExtractionError as exc:
        return {"ok": False, "error": str(exc)}
    except MemoryError:
        return {"ok": False, "error": LIMITS_MESSAGE}
    except Exception as exc:  # noqa: BLE001 - a bug, not the user's fault; no traceback
        return {
            "ok": False,
            "error": f"The file could not be processed: {_short_reason(exc)}",
        }
    return {"ok": True, "kind": result.kind, "title": result.title, "tokens": result.tokens}
