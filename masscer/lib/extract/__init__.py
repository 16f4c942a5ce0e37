"""Text extraction from uploaded documents (PDF, DOCX, Markdown, plain text, HTML).

Two entry points:

* ``extract_file`` runs in-process; fine for trusted input and tests.
* ``extract_isolated`` runs the same code in a child interpreter with CPU and memory limits, so
  a hostile or pathological file cannot take a Celery worker down.

Every failure the user can cause surfaces as ``ExtractionError`` whose ``str()`` is a message
meant for the end user, never a traceback.

Modules: ``common`` (the result and error types, the messages, text helpers), ``core`` (kind
detection, dispatch to a format, size and token limits), one per format (``pdf``, ``docx``,
``html``, and ``text`` for plain text and Markdown), ``isolation`` (the parent's half: the
limited child processes, which report pages as they read them), ``child`` (the child's half),
``shares`` (a long PDF read by several children at once: who reads which pages, and putting
their reports together), ``lines`` (reading the children's output as it comes) and
``__main__`` (the child's entry point).

The package must stay importable without Django and cheap to import: the child process loads it
by file path (see ``__main__``) and then only pypdf or python-docx as needed (and ``tokens.py``,
by file path too, when a token limit is passed).
"""

from __future__ import annotations

from .common import Extracted, ExtractionError, PageSink, clean_text
from .core import detect_kind, extract_file
from .html import html_to_text
from .isolation import extract_isolated

__all__ = [
    "Extracted",
    "ExtractionError",
    "PageSink",
    "clean_text",
    "detect_kind",
    "extract_file",
    "extract_isolated",
    "html_to_text",
]
