"""Files and batches: storage, JSONL validation, OpenAI's batch output format, and the endpoints."""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from .behaviours import (
    BATCH_KINDS,
    BATCH_URLS,
    Behaviour,
    _Call,
    _delay,
    _error_body,
    _http_error,
    _Outcome,
    respond,
)
from .prompts import _chat_prompt, _completion_prompt, read_prompt
from .wire import _bearer, _Handler, _model_not_found, _Multipart, _send_bytes, _send_json, _send_outcome

if TYPE_CHECKING:
    from .server import _Settings

@dataclass
class _StoredFile:
    id: str
    filename: str
    purpose: str
    data: bytes
    created_at: int

    def object(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "object": "file",
            "bytes": len(self.data),
            "created_at": self.created_at,
            "filename": self.filename,
            "purpose": self.purpose,
            "status": "processed",
            "expires_at": None,
            "status_details": None,
        }


@dataclass
class _Batch:
    info: dict[str, Any]
    lines: list[dict[str, Any]]
    behaviour: Behaviour | None
    due: float
    bearer: str
    lock: threading.Lock = field(default_factory=threading.Lock)

    @classmethod
    def create(
        cls,
        *,
        input_file_id: str,
        endpoint: str,
        metadata: Any,
        lines: list[dict[str, Any]],
        errors: list[dict[str, Any]],
        behaviour: Behaviour | None,
        due: float,
        bearer: str,
    ) -> _Batch:
        now = int(time.time())
        info: dict[str, Any] = {
            "id": f"batch_{uuid.uuid4().hex[:24]}",
            "object": "batch",
            "endpoint": endpoint,
            "errors": {"object": "list", "data": errors} if errors else None,
            "input_file_id": input_file_id,
            "completion_window": "24h",
            "status": "failed" if errors else "in_progress",
            "output_file_id": None,
            "error_file_id": None,
            "created_at": now,
            "in_progress_at": None if errors else now,
            "expires_at": now + 24 * 3600,
            "finalizing_at": None,
            "completed_at": None,
            "failed_at": now if errors else None,
            "expired_at": None,
            "cancelling_at": None,
            "cancelled_at": None,
            "request_counts": {"total": len(lines), "completed": 0, "failed": 0},
            "metadata": metadata if isinstance(metadata, dict) else None,
        }
        return cls(info=info, lines=lines, behaviour=behaviour, due=due, bearer=bearer)

    def snapshot(self) -> dict[str, Any]:
        with self.lock:
            return json.loads(json.dumps(self.info))

    def answer_limit(self) -> int:
        if self.behaviour is not None and self.behaviour["kind"] == "batch_expired":
            return max(0, int(self.behaviour.get("n", 0)))
        return len(self.lines)

    def finish(
        self,
        *,
        output_file_id: str | None,
        error_file_id: str | None,
        completed: int,
        failed: int,
        expired: bool,
    ) -> None:
        now = int(time.time())
        self.info.update(
            status="expired" if expired else "completed",
            output_file_id=output_file_id,
            error_file_id=error_file_id,
            finalizing_at=now,
            request_counts={"total": len(self.lines), "completed": completed, "failed": failed},
        )
        self.info["expired_at" if expired else "completed_at"] = now

    def cancel(self) -> None:
        with self.lock:
            if self.info["status"] in ("validating", "in_progress"):
                now = int(time.time())
                self.info.update(status="cancelled", cancelling_at=now, cancelled_at=now)


def _batch_error(code: str, message: str, line: int | None = None, param: str | None = None) -> dict[str, Any]:
    return {"code": code, "message": message, "param": param, "line": line}


def _check_batch_line(line: Any, number: int, url: str, seen: set[str]) -> dict[str, Any] | None:
    if not isinstance(line, dict):
        return _batch_error("invalid_json_line", "Each line must be a JSON object.", number)
    custom_id = line.get("custom_id")
    if not isinstance(custom_id, str) or not custom_id:
        return _batch_error("missing_required_parameter", "custom_id is required.", number, "custom_id")
    if custom_id in seen:
        return _batch_error("duplicate_custom_id", f"custom_id {custom_id!r} is not unique.", number, "custom_id")
    seen.add(custom_id)
    if line.get("method") != "POST":
        return _batch_error("invalid_method", "method must be POST.", number, "method")
    if line.get("url") != url:
        return _batch_error("mismatched_endpoint", f"url must be the batch endpoint {url}.", number, "url")
    body = line.get("body")
    if not isinstance(body, dict) or not body.get("model"):
        return _batch_error("missing_required_parameter", "body with a model is required.", number, "body")
    return None


def validate_batch(data: bytes, url: str) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The lines of a batch input file, or the errors that fail the batch."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        return [], [_batch_error("invalid_file", "The file is not UTF-8 text.")]
    lines: list[dict[str, Any]] = []
    errors: list[dict[str, Any]] = []
    seen: set[str] = set()
    for number, raw in enumerate(text.splitlines(), start=1):
        if not raw.strip():
            continue
        try:
            line = json.loads(raw)
        except ValueError:
            errors.append(_batch_error("invalid_json_line", "This line is not parseable as valid JSON.", number))
            continue
        problem = _check_batch_line(line, number, url, seen)
        if problem is not None:
            errors.append(problem)
        else:
            lines.append(line)
    models = {str(line["body"]["model"]) for line in lines}
    if len(models) > 1:
        errors.append(_batch_error("mismatched_model", "All requests of a batch must use one model."))
    if not lines and not errors:
        errors.append(_batch_error("empty_file", "The batch input file has no requests."))
    return lines, errors


def _expired_line(line: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "id": f"batch_req_{uuid.uuid4().hex[:24]}",
        "custom_id": line["custom_id"],
        "response": None,
        "error": {
            "code": "batch_expired",
            "message": "This request could not be executed before the completion window expired.",
        },
    }


def _jsonl(records: Sequence[Mapping[str, Any]]) -> bytes:
    return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records).encode("utf-8")


class FilesAndBatches:
    """The ``/files`` and ``/batches`` endpoints, mixed into :class:`FakeLLMServer`.

    It works on the server's lock, script, settings and call log, declared here for the reader.
    """

    _lock: threading.Lock
    _files: dict[str, _StoredFile]
    _batches: dict[str, _Batch]
    _api_calls: list[dict[str, Any]]
    _script: list[Behaviour]
    _defaults: list[Behaviour]
    _settings: _Settings
    models: tuple[str, ...]
    strict_models: bool

    if TYPE_CHECKING:

        def _next_behaviour(self, call: _Call) -> Behaviour: ...

        def _record_start(self, call: _Call) -> dict[str, Any]: ...

        def _record_end(self, record: dict[str, Any], outcome: _Outcome) -> None: ...

    @property
    def api_calls(self) -> list[dict[str, Any]]:
        """Requests to /files and /batches ({"method", "path", "status"})."""
        with self._lock:
            return [dict(c) for c in self._api_calls]

    def batches(self) -> list[dict[str, Any]]:
        """The batch objects as a retrieval would show them (without processing)."""
        with self._lock:
            return [json.loads(json.dumps(b.info)) for b in self._batches.values()]

    def file_content(self, file_id: str) -> bytes:
        with self._lock:
            return self._files[file_id].data

    def _api_fault(self, handler: _Handler, endpoint: str, method: str, path: str) -> bool:
        """Answer with a scripted http_error/disconnect for a files/batches call."""
        call = _Call(endpoint=endpoint, body={}, info=read_prompt(""), bearer=_bearer(handler))
        behaviour = self._next_behaviour(call)
        outcome: _Outcome | None = None
        if behaviour["kind"] == "http_error":
            outcome = _http_error(behaviour, call)
        elif behaviour["kind"] == "disconnect":
            outcome = _Outcome(disconnect=True)
        with self._lock:
            self._api_calls.append(
                {"method": method, "path": path, "status": outcome.status if outcome else 200}
            )
        if outcome is None:
            return False
        _send_outcome(handler, outcome)
        return True

    def _files_api(self, handler: _Handler, method: str, path: str, body: Any) -> None:
        if self._api_fault(handler, "files", method, path):
            return
        parts = path.split("/")[2:]  # "/files/ID/content" -> ["ID", "content"]
        if method == "POST" and not parts:
            self._upload(handler, body)
            return
        with self._lock:
            stored = self._files.get(parts[0]) if parts else None
        if method != "GET" or stored is None or len(parts) > 2 or parts[1:] not in ([], ["content"]):
            _send_json(handler, 404, _error_body(f"No such File object: {path}", "invalid_request_error"))
        elif parts[1:] == ["content"]:
            _send_bytes(handler, stored.data, "application/octet-stream")
        else:
            _send_json(handler, 200, stored.object())

    def _upload(self, handler: _Handler, body: Any) -> None:
        fields = body if isinstance(body, _Multipart) else None
        if fields is None or "file" not in fields.parts or "purpose" not in fields.parts:
            _send_json(
                handler,
                400,
                _error_body("Upload a multipart form with 'file' and 'purpose'", "invalid_request_error"),
            )
            return
        filename, data = fields.parts["file"]
        purpose = fields.parts["purpose"][1].decode("utf-8", errors="replace")
        stored = self._store_file(filename or "upload.jsonl", purpose, data)
        _send_json(handler, 200, stored.object())

    def _store_file(self, filename: str, purpose: str, data: bytes) -> _StoredFile:
        stored = _StoredFile(
            id=f"file-{uuid.uuid4().hex[:24]}",
            filename=filename,
            purpose=purpose,
            data=data,
            created_at=int(time.time()),
        )
        with self._lock:
            self._files[stored.id] = stored
        return stored

    def _batches_api(self, handler: _Handler, method: str, path: str, body: Any) -> None:
        if self._api_fault(handler, "batches", method, path):
            return
        parts = path.split("/")[2:]
        if method == "POST" and not parts:
            self._create_batch(handler, body)
            return
        with self._lock:
            batch = self._batches.get(parts[0]) if parts else None
        if batch is None:
            _send_json(handler, 404, _error_body(f"No batch found at {path}", "invalid_request_error"))
        elif method == "GET" and len(parts) == 1:
            self._advance(batch)
            _send_json(handler, 200, batch.snapshot())
        elif method == "POST" and parts[1:] == ["cancel"]:
            batch.cancel()
            _send_json(handler, 200, batch.snapshot())
        else:
            _send_json(handler, 404, _error_body(f"Unknown path {method} {path}", "not_found"))

    def _create_batch(self, handler: _Handler, body: Any) -> None:
        body = body if isinstance(body, Mapping) else {}
        with self._lock:
            stored = self._files.get(str(body.get("input_file_id")))
        url = body.get("endpoint")
        problem = None
        if stored is None or stored.purpose != "batch":
            problem = f"input_file_id {body.get('input_file_id')!r} is not an uploaded batch file"
        elif url not in BATCH_URLS:
            problem = f"endpoint must be one of {sorted(BATCH_URLS)}"
        elif body.get("completion_window") != "24h":
            problem = "completion_window must be '24h'"
        if problem is not None or stored is None:
            _send_json(handler, 400, _error_body(problem or "bad request", "invalid_request_error"))
            return
        lines, errors = validate_batch(stored.data, str(url))
        behaviour = self._next_batch_behaviour(stored.data.decode("utf-8", errors="replace"))
        if not errors and behaviour is not None and behaviour["kind"] == "batch_failed":
            errors = [
                _batch_error(
                    str(behaviour.get("code", "batch_failed")),
                    str(behaviour.get("message", "The batch failed")),
                )
            ]
        with self._lock:
            delay = self._settings.batch_delay
        batch = _Batch.create(
            input_file_id=stored.id,
            endpoint=str(url),
            metadata=body.get("metadata"),
            lines=lines,
            errors=errors,
            behaviour=behaviour,
            due=time.monotonic() + delay + (_delay(behaviour) if behaviour else 0.0),
            bearer=_bearer(handler),
        )
        with self._lock:
            self._batches[batch.info["id"]] = batch
        # OpenAI answers the creation with the batch still being validated.
        _send_json(handler, 200, {**batch.snapshot(), "status": "validating"})

    def _next_batch_behaviour(self, text: str) -> Behaviour | None:
        with self._lock:
            for index, behaviour in enumerate(self._script):
                if behaviour["kind"] in BATCH_KINDS and str(behaviour.get("match", "")) in text:
                    behaviour["times"] -= 1
                    if behaviour["times"] <= 0:
                        del self._script[index]
                    return dict(behaviour)
            for behaviour in self._defaults:
                if behaviour["kind"] in BATCH_KINDS and str(behaviour.get("match", "")) in text:
                    return dict(behaviour)
        return None

    def _advance(self, batch: _Batch) -> None:
        """Answer the batch's lines once its processing delay has passed."""
        with batch.lock:
            if batch.info["status"] != "in_progress" or time.monotonic() < batch.due:
                return
            answered = batch.answer_limit()
            outputs: list[dict[str, Any]] = []
            failures: list[dict[str, Any]] = []
            for index, line in enumerate(batch.lines):
                if index >= answered:
                    failures.append(_expired_line(line))
                    continue
                entry, ok = self._batch_line(batch, line)
                (outputs if ok else failures).append(entry)
            output = self._store_file(f"{batch.info['id']}_output.jsonl", "batch_output", _jsonl(outputs))
            failed = (
                self._store_file(f"{batch.info['id']}_error.jsonl", "batch_output", _jsonl(failures))
                if failures
                else None
            )
            batch.finish(
                output_file_id=output.id if outputs else None,
                error_file_id=failed.id if failed else None,
                completed=len(outputs),
                failed=len(failures),
                expired=answered < len(batch.lines),
            )

    def _batch_line(self, batch: _Batch, line: Mapping[str, Any]) -> tuple[dict[str, Any], bool]:
        """One line through the same behaviours as a live call."""
        endpoint = BATCH_URLS[str(line["url"])]
        body = {k: v for k, v in line["body"].items() if k not in ("stream", "stream_options")}
        prompt = _chat_prompt(body) if endpoint == "chat" else _completion_prompt(body)
        call = _Call(
            endpoint=endpoint, body=body, info=read_prompt(prompt), bearer=batch.bearer, via="batch"
        )
        record = self._record_start(call)
        behaviour = self._next_behaviour(call)
        with self._lock:
            record.update(behaviour=behaviour["kind"], custom_id=line["custom_id"], batch_id=batch.info["id"])
        if self.strict_models and call.model not in self.models:
            outcome = _Outcome(status=404, body=_model_not_found(call.model))
        else:
            outcome = respond(behaviour, call)
        self._record_end(record, outcome)
        entry: dict[str, Any] = {"id": f"batch_req_{uuid.uuid4().hex[:24]}", "custom_id": line["custom_id"]}
        if outcome.disconnect:
            error = {"code": "server_error", "message": "The server closed the connection without answering"}
            return {**entry, "response": None, "error": error}, False
        response = {
            "status_code": outcome.status,
            "request_id": f"req_{uuid.uuid4().hex[:24]}",
            "body": outcome.body or {},
        }
        return {**entry, "response": response, "error": None}, outcome.status == 200
