"""The isolated extraction child's half (see ``isolation`` for the parent's): apply the CPU and
memory limits, read the file (all of it, or one share of a long PDF) and write JSON lines on
stdout as the pages are read, then the verdict. ``__main__`` runs ``child_main``.

Like the whole package, it imports no Django: it runs in a bare interpreter.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Callable, Sequence
from typing import Any

from .common import LIMITS_MESSAGE, ExtractionError, _short_reason
from .core import extract_file, extract_share
from .shares import BATCH_PAGES, Share


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


def child_main(argv: Sequence[str]) -> int:
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
    # One share of a PDF read by several children (see ``shares``).
    parser.add_argument("--share", type=int, default=None)
    parser.add_argument("--shares", type=int, default=1)
    parser.add_argument("--batch", type=int, default=BATCH_PAGES)
    args = parser.parse_args(argv)
    _apply_limits(args.cpu_seconds, args.memory_bytes)
    logging.basicConfig(level=logging.ERROR)  # pypdf warnings would only fill stderr
    if args.share is None:
        payload = _child_payload(
            args.path, args.filename, args.max_bytes, args.max_pages, args.max_tokens
        )
    else:
        share = Share(args.share, args.shares, args.batch)
        payload = _share_payload(
            args.path, args.filename, args.max_bytes, args.max_pages, share, args.max_tokens
        )
    _write_line(payload)
    return 0


def _write_line(message: dict[str, Any]) -> None:
    sys.stdout.buffer.write(json.dumps(message).encode("ascii") + b"\n")
    sys.stdout.flush()


def _send_pages(total: int, first: int, texts: list[str]) -> None:
    _write_line({"total": total, "first": first, "pages": texts})


def _send_counted_pages(total: int, first: int, texts: list[str], tokens: list[int] | None) -> None:
    message: dict[str, Any] = {"total": total, "first": first, "pages": texts}
    if tokens is not None:
        message["tokens"] = tokens
    _write_line(message)


def _send_opened(total: int) -> None:
    _write_line({"opened": total})


def _child_payload(
    path: str,
    filename: str,
    max_bytes: int,
    max_pages: int,
    max_tokens: int | None = None,
) -> dict[str, Any]:
    """The verdict line; the pages went out as they were read."""

    def read() -> dict[str, Any]:
        result = extract_file(
            path,
            filename=filename,
            max_bytes=max_bytes,
            max_pages=max_pages,
            max_tokens=max_tokens,
            on_pages=_send_pages,
        )
        return {"ok": True, "kind": result.kind, "title": result.title, "tokens": result.tokens}

    return _guarded(read)


def _share_payload(
    path: str,
    filename: str,
    max_bytes: int,
    max_pages: int,
    share: Share,
    max_tokens: int | None = None,
) -> dict[str, Any]:
    """The verdict line of one share: the title (first child only) and the stats the parent
    combines (``shares.document_error``); ``{"opened": total}`` and the pages went out before."""

    def read() -> dict[str, Any]:
        title, stats = extract_share(
            path,
            filename=filename,
            max_bytes=max_bytes,
            max_pages=max_pages,
            share=share,
            max_tokens=max_tokens,
            on_opened=_send_opened,
            on_pages=_send_counted_pages,
        )
        return {"ok": True, "kind": "pdf", "title": title, "stats": stats.to_json()}

    return _guarded(read)


def _guarded(read: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    """``read()``'s verdict, or the failure's message for the user."""
    try:
        return read()
    except ExtractionError as exc:
        return {"ok": False, "error": str(exc)}
    except MemoryError:
        return {"ok": False, "error": LIMITS_MESSAGE}
    except Exception as exc:  # noqa: BLE001 - a bug, not the user's fault; no traceback
        return {
            "ok": False,
            "error": f"The file could not be processed: {_short_reason(exc)}",
        }
