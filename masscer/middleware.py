"""Uploads with too many files are refused before any view (or the CSRF check) reads them.

Django stops parsing a request at DATA_UPLOAD_MAX_NUMBER_FILES and raises TooManyFilesSent,
which it would answer with a bare "Bad Request (400)" page (a traceback page with DEBUG on).
This middleware reads the files first and answers in words instead: JSON under /api/, and on
a page the same page again (as a GET, so nothing is stored) with the reason as an error message.

Also: health probes answered before anything else (`ProbeMiddleware`), and a request id on
every request's log records and response (`RequestIdMiddleware`).
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable
from typing import Any

from django.conf import settings
from django.contrib import messages
from django.core.exceptions import TooManyFilesSent
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import render

from masscer import health, logs

logger = logging.getLogger(__name__)


def too_many_files(sent: int | None) -> str:
    """The refusal in words; `sent` is None when Django stopped reading before the end."""
    limit = settings.MASSCER_MAX_UPLOAD_FILES
    counted = f"{sent} files were sent" if sent is not None else f"More than {limit} files were sent"
    return f"{counted}; at most {limit} can be uploaded at once. Upload them in smaller batches."


def _files_sent(request: HttpRequest) -> int | None:
    try:
        return sum(len(files) for _, files in request.FILES.lists())
    except TooManyFilesSent:
        # What was read is already closed; nothing more may be read from this request.
        request._mark_post_parse_error()  # type: ignore[attr-defined]
        return None


class UploadLimitMiddleware:
    """Sits before CsrfViewMiddleware: that one reads request.POST and would raise first."""

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        return self.get_response(request)

    def process_view(
        self, request: HttpRequest, view: Callable[..., HttpResponse], args: Any, kwargs: Any
    ) -> HttpResponse | None:
        if request.method != "POST" or request.content_type != "multipart/form-data":
            return None
        sent = _files_sent(request)
        if sent is not None and sent <= settings.MASSCER_MAX_UPLOAD_FILES:
            return None
        message = too_many_files(sent)
        logger.warning("Refused an upload to %s: %s", request.path, message)
        if request.path.startswith("/api/"):
            return JsonResponse({"detail": message}, status=400)
        return _page_with_error(request, view, args, kwargs, message)


def _page_with_error(
    request: HttpRequest, view: Callable[..., HttpResponse], args: Any, kwargs: Any, message: str
) -> HttpResponse:
    """The page the form came from, with the reason on top; status 400 (htmx swaps it in)."""
    messages.error(request, message)
    request.method = "GET"
    response = view(request, *args, **kwargs)
    if response.status_code != 200 or getattr(response, "streaming", False):
        # No page to go back to (a POST-only view): a page of its own says why.
        response = render(request, "400.html", status=400)
    response.status_code = 400
    return response


class ProbeMiddleware:
    """Answers /healthz and /readyz first: before host validation and the HTTPS redirect.

    Probes come from the orchestrator over plain http to the container's own address (a Host
    that is not in ALLOWED_HOSTS); they need no session, user or request id either.
    """

    PROBES: dict[str, Callable[[HttpRequest], HttpResponse]] = {"/healthz": health.healthz, "/readyz": health.readyz}

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        probe = self.PROBES.get(request.path_info)
        return probe(request) if probe is not None else self.get_response(request)


access_logger = logging.getLogger("masscer.request")


class RequestIdMiddleware:
    """Gives each request an id (a sane incoming X-Request-ID, else a new one) that every log
    record written while it runs carries, and sends it back in the X-Request-ID header.

    With MASSCER_ACCESS_LOG on (the default without DEBUG) each request also writes one log
    line: method, path, status and duration.
    """

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        request_id = logs.sane_request_id(request.headers.get("X-Request-ID")) or uuid.uuid4().hex
        request.request_id = request_id  # type: ignore[attr-defined]
        started = time.perf_counter()
        with logs.bound(request_id=request_id):
            response = self.get_response(request)
            if settings.MASSCER_ACCESS_LOG:
                _log_access(request, response, time.perf_counter() - started)
        response["X-Request-ID"] = request_id
        return response


def _log_access(request: HttpRequest, response: HttpResponse, seconds: float) -> None:
    ms = round(seconds * 1000, 1)
    access_logger.info(
        "%s %s %s %.1f ms", request.method, request.path, response.status_code, ms,
        extra={"method": request.method, "path": request.path, "status": response.status_code, "ms": ms},
    )  # fmt: skip
