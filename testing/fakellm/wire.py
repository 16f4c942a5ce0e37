"""HTTP plumbing: the threaded server and handler, reading bodies, sending JSON, bytes and streams."""

from __future__ import annotations

import email.parser
import email.policy
import json
import math
import socket
import time
from collections.abc import Mapping
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING, Any

from .behaviours import _error_body, _Outcome
from .streaming import stream_chunks

if TYPE_CHECKING:
    from .server import FakeLLMServer

class _HTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    # Benchmarks open many connections at once; the default backlog of 5
    # would turn bursts into connection errors.
    request_queue_size = 512
    fake: FakeLLMServer


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _HTTPServer

    def do_GET(self) -> None:
        self.server.fake._dispatch(self, "GET")

    def do_POST(self) -> None:
        self.server.fake._dispatch(self, "POST")

    def setup(self) -> None:
        super().setup()
        # Headers and body leave in separate writes; without this, Nagle's algorithm holds
        # the body until the client's delayed ACK (~40 ms per call), as no real server does.
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.server.fake._track(self.connection, add=True)

    def finish(self) -> None:
        try:
            super().finish()
        finally:
            self.server.fake._track(self.connection, add=False)

    def log_message(self, format: str, *args: Any) -> None:
        # Silence per-request logging; the call log is the record.
        return


def _model_not_found(model: str) -> dict[str, Any]:
    return _error_body(
        f"The model '{model}' does not exist",
        "invalid_request_error",
        "model_not_found",
        "model",
    )


def _rate_limited(message: str, retry_after: float, reason: str) -> _Outcome:
    return _Outcome(
        status=429,
        body=_error_body(message, "rate_limit_exceeded", "rate_limit_exceeded"),
        headers={"Retry-After": str(math.ceil(retry_after)), "x-fake-rejected": reason},
    )


def _bearer(handler: _Handler) -> str:
    value = handler.headers.get("Authorization", "")
    return value[7:] if value.lower().startswith("bearer ") else ""


def _read_json(handler: _Handler) -> tuple[Any, str | None]:
    length = int(handler.headers.get("Content-Length") or 0)
    raw = handler.rfile.read(length) if length > 0 else b""
    if not raw:
        return None, None
    try:
        return json.loads(raw), None
    except ValueError as exc:
        return None, f"Request body is not valid JSON: {exc}"


def _send_json(
    handler: _Handler, status: int, body: Any, headers: Mapping[str, str] | None = None
) -> None:
    data = json.dumps(body, ensure_ascii=False).encode("utf-8")
    handler.send_response(status)
    handler.send_header("Content-Type", "application/json")
    handler.send_header("Content-Length", str(len(data)))
    for name, value in (headers or {}).items():
        handler.send_header(name, value)
    handler.end_headers()
    handler.wfile.write(data)
    handler.wfile.flush()


def _send_outcome(handler: _Handler, outcome: _Outcome) -> None:
    if outcome.stream and not outcome.disconnect and outcome.status == 200:
        _send_stream(handler, outcome)
        return
    if outcome.disconnect:
        handler.close_connection = True
        try:
            handler.connection.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        return
    _send_json(handler, outcome.status, outcome.body or {}, outcome.headers)


def _send_stream(handler: _Handler, outcome: _Outcome) -> None:
    handler.send_response(200)
    handler.send_header("Content-Type", "text/event-stream; charset=utf-8")
    handler.send_header("Cache-Control", "no-cache")
    handler.send_header("Transfer-Encoding", "chunked")
    for name, value in outcome.headers.items():
        handler.send_header(name, value)
    handler.end_headers()

    def write(data: bytes) -> None:
        handler.wfile.write(b"%X\r\n%s\r\n" % (len(data), data))
        handler.wfile.flush()

    sent = 0
    for kind, payload in stream_chunks(outcome.body or {}, include_usage=outcome.include_usage):
        if outcome.fault and kind in ("content", "final") and sent >= outcome.fault_after:
            if outcome.fault == "disconnect":
                _send_outcome(handler, _Outcome(disconnect=True))
                return
            error = _error_body(outcome.fault_message, outcome.fault_type)
            write(b"data: " + json.dumps(error).encode("utf-8") + b"\n\n")
            break
        data = payload if isinstance(payload, str) else json.dumps(payload, ensure_ascii=False)
        write(b"data: " + data.encode("utf-8") + b"\n\n")
        if kind == "content":
            sent += 1
            if outcome.chunk_delay > 0:
                time.sleep(outcome.chunk_delay)
    handler.wfile.write(b"0\r\n\r\n")
    handler.wfile.flush()


@dataclass
class _Multipart:
    """A multipart/form-data body: field name -> (filename, bytes)."""

    parts: dict[str, tuple[str | None, bytes]]


def _parse_multipart(content_type: str, raw: bytes) -> _Multipart:
    head = f"Content-Type: {content_type}\r\nMIME-Version: 1.0\r\n\r\n".encode("latin-1")
    message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(head + raw)
    if not message.is_multipart():
        raise ValueError("the multipart body could not be read")
    parts: dict[str, tuple[str | None, bytes]] = {}
    for part in message.iter_parts():
        name = part.get_param("name", header="content-disposition")
        if isinstance(name, str):
            payload = part.get_payload(decode=True)
            parts[name] = (part.get_filename(), payload if isinstance(payload, bytes) else b"")
    return _Multipart(parts)


def _read_body(handler: _Handler) -> tuple[Any, str | None]:
    """JSON bodies as parsed JSON, multipart uploads as :class:`_Multipart`."""
    content_type = handler.headers.get("Content-Type", "")
    if not content_type.lower().startswith("multipart/form-data"):
        return _read_json(handler)
    length = int(handler.headers.get("Content-Length") or 0)
    raw = handler.rfile.read(length) if length > 0 else b""
    try:
        return _parse_multipart(content_type, raw), None
    except (ValueError, TypeError) as exc:
        return None, f"Request body is not valid multipart: {exc}"


def _send_bytes(handler: _Handler, data: bytes, content_type: str) -> None:
    handler.send_response(200)
    handler.send_header("Content-Type", content_type)
    handler.send_header("Content-Length", str(len(data)))
    handler.end_headers()
    handler.wfile.write(data)
    handler.wfile.flush()
