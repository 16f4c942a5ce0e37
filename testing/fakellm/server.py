"""The fake server: scripting, settings, the call log and the generation endpoints."""

from __future__ import annotations

import enum
import socket
import threading
import time
import urllib.parse
from collections import Counter, deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Self

from .batches import FilesAndBatches, _Batch, _StoredFile
from .behaviours import (
    Behaviour,
    _applies,
    _approx_tokens,
    _Call,
    _delay,
    _error_body,
    _Outcome,
    respond,
    validate_behaviour,
)
from .embeddings import embed
from .prompts import _chat_prompt, _completion_prompt, read_prompt, source_hash
from .wire import (
    _bearer,
    _Handler,
    _HTTPServer,
    _model_not_found,
    _rate_limited,
    _read_body,
    _send_json,
    _send_outcome,
)


class _Keep(enum.Enum):
    """Sentinel for configure(): leave this setting unchanged."""

    KEEP = "keep"


KEEP = _Keep.KEEP


@dataclass
class _Settings:
    latency: float = 0.0
    capacity: int | None = None
    rpm: int | None = None
    chunk_delay: float = 0.0
    batch_delay: float = 0.0


class FakeLLMServer(FilesAndBatches):
    """Fake OpenAI-compatible server on 127.0.0.1 running in a daemon thread."""

    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        latency: float = 0.0,
        capacity: int | None = None,
        rpm: int | None = None,
        models: Sequence[str] = ("fake-model",),
        strict_models: bool = False,
        chunk_delay: float = 0.0,
        batch_delay: float = 0.0,
    ) -> None:
        self._settings = _Settings(
            latency=latency,
            capacity=capacity,
            rpm=rpm,
            chunk_delay=chunk_delay,
            batch_delay=batch_delay,
        )
        self.models = tuple(models)
        self.strict_models = strict_models
        self._lock = threading.Lock()
        self._script: list[Behaviour] = []
        self._defaults: list[Behaviour] = []
        self._calls: list[dict[str, Any]] = []
        self._embedding_calls: list[dict[str, Any]] = []
        self._api_calls: list[dict[str, Any]] = []
        self._files: dict[str, _StoredFile] = {}
        self._batches: dict[str, _Batch] = {}
        self._recent: deque[float] = deque()
        self._in_flight = 0
        self._max_in_flight = 0
        self._connections: set[socket.socket] = set()
        self._httpd = _HTTPServer((host, port), _Handler)
        self._httpd.fake = self
        self._thread: threading.Thread | None = None

    # -- lifecycle -------------------------------------------------------

    @property
    def port(self) -> int:
        return int(self._httpd.server_address[1])

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def base_url(self) -> str:
        return f"{self.url}/v1"

    def start(self) -> Self:
        if self._thread is None:
            self._thread = threading.Thread(
                target=self._httpd.serve_forever,
                # A short poll keeps stop() (and test teardown) fast.
                kwargs={"poll_interval": 0.05},
                name="fakellm",
                daemon=True,
            )
            self._thread.start()
        return self

    def stop(self) -> None:
        if self._thread is not None:
            self._httpd.shutdown()
            self._thread.join(timeout=5)
            self._thread = None
        # Keep-alive connections would otherwise keep being served.
        with self._lock:
            connections = list(self._connections)
        for connection in connections:
            try:
                connection.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        self._httpd.server_close()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def _track(self, connection: socket.socket, *, add: bool) -> None:
        with self._lock:
            if add:
                self._connections.add(connection)
            else:
                self._connections.discard(connection)

    # -- scripting -------------------------------------------------------

    def script(
        self, behaviours: Sequence[Mapping[str, Any]], *, append: bool = False
    ) -> None:
        """Queue behaviours consumed in order (replacing the queue unless append)."""
        validated = [validate_behaviour(b) for b in behaviours]
        with self._lock:
            if not append:
                self._script.clear()
            self._script.extend(validated)

    def set_default(
        self, behaviour: Mapping[str, Any] | Sequence[Mapping[str, Any]] | None
    ) -> None:
        """Behaviour(s) used when the script has nothing applicable; the first
        default whose match/endpoint applies wins, otherwise "good"."""
        if behaviour is None:
            defaults: list[Behaviour] = []
        elif isinstance(behaviour, Mapping):
            defaults = [validate_behaviour(behaviour)]
        else:
            defaults = [validate_behaviour(b) for b in behaviour]
        with self._lock:
            self._defaults = defaults

    def configure(
        self,
        *,
        latency: float | None = None,
        capacity: int | None | _Keep = KEEP,
        rpm: int | None | _Keep = KEEP,
        chunk_delay: float | None = None,
        batch_delay: float | None = None,
    ) -> None:
        """Change settings; pass capacity=None / rpm=None to remove a limit."""
        with self._lock:
            if latency is not None:
                self._settings.latency = float(latency)
            if batch_delay is not None:
                self._settings.batch_delay = float(batch_delay)
            if chunk_delay is not None:
                self._settings.chunk_delay = float(chunk_delay)
            if not isinstance(capacity, _Keep):
                self._settings.capacity = None if capacity is None else int(capacity)
            if not isinstance(rpm, _Keep):
                self._settings.rpm = None if rpm is None else int(rpm)

    def reset(self) -> None:
        """Clear script, defaults, call log and rate-limit window."""
        with self._lock:
            self._script.clear()
            self._defaults.clear()
            self._calls.clear()
            self._embedding_calls.clear()
            self._api_calls.clear()
            self._files.clear()
            self._batches.clear()
            self._recent.clear()
            self._max_in_flight = self._in_flight

    def pending(self) -> list[Behaviour]:
        with self._lock:
            return [dict(b) for b in self._script]

    # -- call log --------------------------------------------------------

    @property
    def calls(self) -> list[dict[str, Any]]:
        with self._lock:
            return [dict(c) for c in self._calls]

    def _calls_query(self, raw_path: str) -> list[dict[str, Any]]:
        """GET /_fake/calls?since=ID&brief=1: newer calls only / without the
        bulky request and prompt (for benchmarks polling a long log)."""
        query = urllib.parse.parse_qs(urllib.parse.urlsplit(raw_path).query)
        since = int(query.get("since", ["0"])[0])
        brief = query.get("brief", ["0"])[0] not in ("0", "", "false")
        calls = [c for c in self.calls if c["id"] > since]
        if brief:
            for call in calls:
                call.pop("request", None)
                call.pop("prompt", None)
        return calls

    @property
    def embedding_calls(self) -> list[dict[str, Any]]:
        """Requests to /embeddings ({"model", "input"}), kept apart from the generation log."""
        with self._lock:
            return [dict(c) for c in self._embedding_calls]

    def calls_for(self, substring: str) -> list[dict[str, Any]]:
        return [c for c in self.calls if substring in (c.get("prompt") or "")]

    def counts_by_source(self) -> dict[str, int]:
        counter = Counter(c["source_hash"] for c in self.calls if c.get("source_hash"))
        return dict(counter)

    @property
    def max_in_flight(self) -> int:
        with self._lock:
            return self._max_in_flight

    def state(self) -> dict[str, Any]:
        with self._lock:
            settings = {
                "latency": self._settings.latency,
                "capacity": self._settings.capacity,
                "rpm": self._settings.rpm,
            }
            return {
                "base_url": self.base_url,
                "settings": settings,
                "script": [dict(b) for b in self._script],
                "defaults": [dict(b) for b in self._defaults],
                "in_flight": self._in_flight,
                "max_in_flight": self._max_in_flight,
                "calls": len(self._calls),
                "batch_delay": self._settings.batch_delay,
                "files": len(self._files),
                "batches": {b.info["id"]: b.info["status"] for b in self._batches.values()},
                "counts_by_source": dict(
                    Counter(c["source_hash"] for c in self._calls if c["source_hash"])
                ),
            }

    # -- request handling ------------------------------------------------

    def _dispatch(self, handler: _Handler, method: str) -> None:
        path = urllib.parse.urlsplit(handler.path).path.rstrip("/")
        body, error = _read_body(handler)
        if path.startswith("/v1/"):
            path = path[3:]
        try:
            if error is not None:
                _send_json(handler, 400, _error_body(error, "invalid_request_error"))
            elif path.startswith("/_fake/"):
                self._control(handler, method, path, body)
            elif method == "GET" and path == "/models":
                _send_json(handler, 200, self._models_body())
            elif method == "GET" and path.startswith("/models/"):
                self._retrieve_model(handler, path.removeprefix("/models/"))
            elif method == "POST" and path == "/chat/completions":
                self._generate(handler, "chat", body)
            elif method == "POST" and path == "/completions":
                self._generate(handler, "completion", body)
            elif method == "POST" and path == "/embeddings":
                self._embeddings(handler, body)
            elif path == "/files" or path.startswith("/files/"):
                self._files_api(handler, method, path, body)
            elif path == "/batches" or path.startswith("/batches/"):
                self._batches_api(handler, method, path, body)
            else:
                _send_json(
                    handler,
                    404,
                    _error_body(f"Unknown path {method} {handler.path}", "not_found"),
                )
        except (BrokenPipeError, ConnectionResetError):
            # The client gave up (e.g. its timeout fired); nothing to answer.
            handler.close_connection = True

    def _control(self, handler: _Handler, method: str, path: str, body: Any) -> None:
        try:
            if method == "POST" and path == "/_fake/script":
                behaviours = (
                    body.get("behaviours", []) if isinstance(body, Mapping) else body
                )
                append = (
                    bool(body.get("append", False))
                    if isinstance(body, Mapping)
                    else False
                )
                self.script(behaviours or [], append=append)
            elif method == "POST" and path == "/_fake/default":
                default = (
                    body.get("default", body)
                    if isinstance(body, Mapping) and "default" in body
                    else body
                )
                self.set_default(default)
            elif method == "POST" and path == "/_fake/settings":
                settings = dict(body or {})
                self.configure(
                    latency=settings.get("latency"),
                    capacity=settings.get("capacity", KEEP),
                    rpm=settings.get("rpm", KEEP),
                    chunk_delay=settings.get("chunk_delay"),
                    batch_delay=settings.get("batch_delay"),
                )
            elif method == "POST" and path == "/_fake/reset":
                self.reset()
            elif method == "GET" and path == "/_fake/calls":
                _send_json(handler, 200, self._calls_query(handler.path))
                return
            elif method == "GET" and path == "/_fake/state":
                _send_json(handler, 200, self.state())
                return
            else:
                _send_json(
                    handler,
                    404,
                    _error_body(f"Unknown control path {path}", "not_found"),
                )
                return
        except (TypeError, ValueError) as exc:
            _send_json(handler, 400, _error_body(str(exc), "invalid_request_error"))
            return
        _send_json(handler, 200, {"ok": True, "state": self.state()})

    def _models_body(self) -> dict[str, Any]:
        data = [
            {"id": m, "object": "model", "created": 0, "owned_by": "fakellm"}
            for m in self.models
        ]
        return {"object": "list", "data": data}

    def _retrieve_model(self, handler: _Handler, model: str) -> None:
        if model in self.models:
            _send_json(
                handler,
                200,
                {"id": model, "object": "model", "created": 0, "owned_by": "fakellm"},
            )
        else:
            _send_json(handler, 404, _model_not_found(model))

    def _embeddings(self, handler: _Handler, body: Any) -> None:
        body = body if isinstance(body, Mapping) else {}
        inputs = body.get("input", "")
        texts = [inputs] if isinstance(inputs, str) else [str(i) for i in inputs]
        dimensions = int(body.get("dimensions") or 64)
        data = [
            {"object": "embedding", "index": i, "embedding": embed(text, dimensions)}
            for i, text in enumerate(texts)
        ]
        tokens = sum(_approx_tokens(t) for t in texts)
        with self._lock:
            self._embedding_calls.append({"model": body.get("model"), "input": texts})
        _send_json(
            handler,
            200,
            {
                "object": "list",
                "data": data,
                "model": str(body.get("model") or "fake-embedding"),
                "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
            },
        )

    def _generate(self, handler: _Handler, endpoint: str, body: Any) -> None:
        body = body if isinstance(body, Mapping) else {}
        prompt = _chat_prompt(body) if endpoint == "chat" else _completion_prompt(body)
        call = _Call(
            endpoint=endpoint,
            body=body,
            info=read_prompt(prompt),
            bearer=_bearer(handler),
        )
        record = self._record_start(call)
        rejection = self._admit()
        if rejection is not None:
            self._record_end(record, rejection)
            _send_outcome(handler, rejection)
            return
        try:
            behaviour = self._next_behaviour(call)
            with self._lock:
                record["behaviour"] = behaviour["kind"]
                latency = self._settings.latency
                chunk_delay = self._settings.chunk_delay
            time.sleep(latency + _delay(behaviour))
            if self.strict_models and call.model not in self.models:
                outcome = _Outcome(status=404, body=_model_not_found(call.model))
            else:
                outcome = respond(behaviour, call)
                if "chunk_delay" not in behaviour:
                    outcome.chunk_delay = chunk_delay
            self._record_end(record, outcome)
            _send_outcome(handler, outcome)
        finally:
            with self._lock:
                self._in_flight -= 1

    def _admit(self) -> _Outcome | None:
        """Take an in-flight slot, or return the 429 outcome for capacity/rpm."""
        now = time.monotonic()
        with self._lock:
            settings = self._settings
            if settings.capacity is not None and self._in_flight >= settings.capacity:
                return _rate_limited(
                    "Server at capacity; too many concurrent requests", 1.0, "capacity"
                )
            if settings.rpm is not None:
                while self._recent and now - self._recent[0] >= 60.0:
                    self._recent.popleft()
                if len(self._recent) >= settings.rpm:
                    wait = max(1.0, 60.0 - (now - self._recent[0]))
                    return _rate_limited(
                        f"Rate limit of {settings.rpm} requests per minute reached",
                        wait,
                        "rpm",
                    )
                self._recent.append(now)
            self._in_flight += 1
            self._max_in_flight = max(self._max_in_flight, self._in_flight)
            return None

    def _next_behaviour(self, call: _Call) -> Behaviour:
        with self._lock:
            for index, behaviour in enumerate(self._script):
                if _applies(behaviour, call):
                    behaviour["times"] -= 1
                    if behaviour["times"] <= 0:
                        del self._script[index]
                    return dict(behaviour)
            for behaviour in self._defaults:
                if _applies(behaviour, call):
                    return dict(behaviour)
        return {"kind": "good", "times": 1}

    def _record_start(self, call: _Call) -> dict[str, Any]:
        record: dict[str, Any] = {
            "id": 0,
            "started": time.time(),
            "ended": None,
            "endpoint": "batch" if call.via == "batch" else call.endpoint,
            "model": call.model,
            # The key the client sent (tests check it is used, yet shown and logged nowhere).
            "bearer": call.bearer,
            "request": dict(call.body),
            "prompt": call.info.prompt,
            "response_format": call.response_format_type,
            "source_hash": source_hash(call.info.source)
            if call.info.source is not None
            else None,
            "requested_count": call.info.count,
            "question_type": call.info.question_type,
            "existing_questions": len(call.info.existing),
            "behaviour": None,
            "status": None,
            "rejected": None,
            "pairs_returned": None,
            "finish_reason": None,
            "stream": call.body.get("stream") is True,
        }
        with self._lock:
            record["id"] = len(self._calls) + 1
            self._calls.append(record)
        return record

    def _record_end(self, record: dict[str, Any], outcome: _Outcome) -> None:
        with self._lock:
            record["ended"] = time.time()
            record["status"] = 0 if outcome.disconnect else outcome.status
            record["rejected"] = outcome.headers.get("x-fake-rejected")
            record["pairs_returned"] = outcome.pairs_returned
            record["finish_reason"] = outcome.finish_reason
