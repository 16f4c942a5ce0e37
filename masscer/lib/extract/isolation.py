"""Extraction of untrusted files in a child interpreter limited in CPU time, memory and wall
time, so a hostile or pathological file cannot take a Celery worker down. Celery prefork workers
are daemonic and may not use ``multiprocessing``, hence a plain ``subprocess``.

The parent half (``extract_isolated``) starts ``__main__.py`` of this package as a script; the
child half (``_child_main``) applies the limits, runs ``core.extract_file`` and prints the result
as JSON on stdout.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import subprocess
import sys
from collections.abc import Sequence
from typing import Any

from .common import LIMITS_MESSAGE, Extracted, ExtractionError, _short_reason
from .core import _check_size, _file_size, extract_file

log = logging.getLogger(__name__)

# What the child runs; see ``_child_command``.
_CHILD_SCRIPT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "__main__.py")


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
) -> Extracted:
    """Run ``extract_file`` in a child interpreter limited in CPU time, memory and wall time.

    Pass ``max_tokens`` to have the child count the text under the same limits (an over-long
    document is refused there, and ``Extracted.tokens`` spares the caller a second count)."""
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
        proc = subprocess.run(
            command,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            timeout=timeout,
            check=False,
        )
    except subprocess.TimeoutExpired:
        raise ExtractionError(LIMITS_MESSAGE) from None
    except OSError as exc:
        log.error("could not start the extraction process: %s", exc)
        raise ExtractionError(
            "The file could not be processed (internal error)."
        ) from None
    return _parse_child_result(proc)


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


def _parse_child_result(proc: subprocess.CompletedProcess[bytes]) -> Extracted:
    try:
        payload = json.loads(proc.stdout) if proc.returncode == 0 else None
    except ValueError:
        payload = None
    if not isinstance(payload, dict):
        stderr_tail = proc.stderr[-2000:].decode("utf-8", "replace")
        log.warning(
            "extraction child failed (code %s): %s", proc.returncode, stderr_tail
        )
        # Killed by a signal (SIGXCPU, SIGKILL, SIGSEGV...) or out of address space.
        if proc.returncode < 0 or b"MemoryError" in proc.stderr:
            raise ExtractionError(LIMITS_MESSAGE)
        raise ExtractionError("The file could not be processed (internal error).")
    if not payload.get("ok"):
        raise ExtractionError(
            str(payload.get("error") or "The file could not be processed.")
        )
    return Extracted(
        kind=payload["kind"],
        pages=list(payload["pages"]),
        title=payload["title"],
        tokens=payload.get("tokens"),
    )


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
    sys.stdout.buffer.write(json.dumps(payload).encode("ascii"))
    sys.stdout.flush()
    return 0


def _child_payload(
    path: str,
    filename: str,
    max_bytes: int,
    max_pages: int,
    max_tokens: int | None = None,
) -> dict[str, Any]:
    try:
        result = extract_file(
            path,
            filename=filename,
            max_bytes=max_bytes,
            max_pages=max_pages,
            max_tokens=max_tokens,
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
    return {
        "ok": True,
        "kind": result.kind,
        "title": result.title,
        "pages": result.pages,
        "tokens": result.tokens,
    }
