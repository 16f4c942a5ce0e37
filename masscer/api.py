"""The JSON API (django-ninja), mounted at /api/; OpenAPI schema at /api/openapi.json, docs at /api/docs.

Authentication: a personal API token (`Authorization: Bearer msk_...`, created and revoked by
the user) or the browser's session, which must then send the CSRF token (`X-CSRFToken`) on
unsafe methods. Every object is looked up among those of the user's workspaces, so an
outsider gets 404, never 403. Errors are JSON `{"detail": "message"}`: 400 for invalid input
(with the service's message), 401 without credentials, 403 for a missing role, 404, 409 for a
conflict with the object's state, 413 for an upload over the limit.
"""
from __future__ import annotations

from typing import Any

from django.conf import settings
from django.core.exceptions import ObjectDoesNotExist, PermissionDenied, RequestDataTooBig, ValidationError
from django.db.models import ProtectedError
from django.http import Http404, HttpRequest, HttpResponse
from ninja import NinjaAPI, Swagger
from ninja.errors import AuthenticationError, HttpError
from ninja.errors import ValidationError as NinjaValidationError
from ninja.parser import Parser
from ninja.security import HttpBearer
from ninja.security.apikey import APIKeyCookie
from ninja.utils import check_csrf

from agents.api import router as agents_router
from conversations.api import router as conversations_router
from documents.api import router as documents_router
from masscer.lib import jsonsafe
from training.api import router as training_router
from training.template_api import router as templates_router
from workspaces.api import router as workspaces_router
from workspaces.services import api_token_authenticate

SAFE_METHODS = ("GET", "HEAD", "OPTIONS", "TRACE")


class TokenAuth(HttpBearer):
    """`Authorization: Bearer <token>`; unknown and revoked tokens authenticate nobody."""

    def authenticate(self, request: HttpRequest, token: str) -> Any:
        user = api_token_authenticate(raw=token.strip())
        if user is not None:
            request.user = user
        return user


class SessionAuth(APIKeyCookie):
    """The browser's Django session; unsafe methods must carry the CSRF token.

    Unlike ninja's own session auth, a request without a logged-in session is simply not
    authenticated here (401), rather than failing the CSRF check first (403).
    """

    param_name = settings.SESSION_COOKIE_NAME

    def _get_key(self, request: HttpRequest) -> str | None:
        if not request.user.is_authenticated:
            return None
        if request.method not in SAFE_METHODS and check_csrf(request) is not None:
            raise PermissionDenied("CSRF check failed: send the X-CSRFToken header with session authentication.")
        return request.COOKIES.get(self.param_name)

    def authenticate(self, request: HttpRequest, key: str | None) -> Any:
        return request.user if request.user.is_authenticated else None


class SafeJSONParser(Parser):
    """Bodies with what json.loads accepts but nothing after it can take (a lone surrogate,
    nesting past the recursion limit, a 5,000-digit number) are refused with the reason."""

    def parse_body(self, request: HttpRequest) -> Any:
        return jsonsafe.loads(request.body, what="The request body")


api = NinjaAPI(
    parser=SafeJSONParser(),
    title="Masscer datasets API",
    version="1",
    description=__doc__ or "",
    auth=[TokenAuth(), SessionAuth()],
    urls_namespace="api",
    # Swagger UI from ninja's own static files ("ninja" is an installed app), not a CDN; and no
    # badge that sends the schema to the public validator: the docs work offline.
    docs=Swagger(settings={"validatorUrl": None}),
)


def _error(request: HttpRequest, status: int, detail: str, **extra: Any) -> HttpResponse:
    response = api.create_response(request, {"detail": detail, **extra}, status=status)
    if status == 401:
        response["WWW-Authenticate"] = 'Bearer realm="api"'
    return response


@api.exception_handler(ValidationError)
def on_validation_error(request: HttpRequest, exc: ValidationError) -> HttpResponse:
    detail = " ".join(exc.messages)
    code = getattr(exc, "code", None)
    if code == "too_large":
        return _error(request, 413, detail)
    if code == "forbidden":
        return _error(request, 403, detail)
    return _error(request, 400, detail)


def _location(error: dict[str, Any]) -> str:
    # ninja prefixes the parameter source ("body", "query", "path", "form", "file").
    sources = ("body", "query", "path", "form", "file", "payload", "filters")
    return ".".join(str(part) for part in error.get("loc", ()) if part not in sources)


@api.exception_handler(HttpError)
def on_http_error(request: HttpRequest, exc: HttpError) -> HttpResponse:
    # ninja reports any parser failure as "Cannot parse request body": give the reason instead.
    cause = exc.__cause__
    detail = str(cause) if isinstance(cause, jsonsafe.JSONInputError) else str(exc)
    return _error(request, exc.status_code, detail)


@api.exception_handler(NinjaValidationError)
def on_schema_error(request: HttpRequest, exc: NinjaValidationError) -> HttpResponse:
    messages = [f"{_location(error) or 'request'}: {error.get('msg', 'invalid')}" for error in exc.errors]
    errors = [{"loc": list(map(str, e.get("loc", ()))), "msg": str(e.get("msg", ""))} for e in exc.errors]
    return _error(request, 400, "; ".join(messages) or "Invalid request.", errors=errors)


@api.exception_handler(AuthenticationError)
def on_unauthenticated(request: HttpRequest, exc: AuthenticationError) -> HttpResponse:
    return _error(request, 401, "Authentication required: send 'Authorization: Bearer <token>' or log in.")


@api.exception_handler(PermissionDenied)
def on_forbidden(request: HttpRequest, exc: PermissionDenied) -> HttpResponse:
    return _error(request, 403, str(exc) or "You may not do this.")


@api.exception_handler(Http404)
def on_not_found(request: HttpRequest, exc: Http404) -> HttpResponse:
    detail = str(exc) if str(exc) else "Not found."
    return _error(request, 404, detail[:1].upper() + detail[1:] + ("" if detail.endswith(".") else "."))


@api.exception_handler(ObjectDoesNotExist)
def on_missing(request: HttpRequest, exc: ObjectDoesNotExist) -> HttpResponse:
    return _error(request, 404, "Not found.")


@api.exception_handler(ProtectedError)
def on_protected(request: HttpRequest, exc: ProtectedError) -> HttpResponse:
    return _error(request, 409, "Completions were made from it; reject or remove them first.")


@api.exception_handler(RequestDataTooBig)
def on_too_big(request: HttpRequest, exc: RequestDataTooBig) -> HttpResponse:
    return _error(request, 413, "The request body is over the size limit.")


api.add_router("/documents", documents_router)
api.add_router("/conversations", conversations_router)
api.add_router("/agents", agents_router)
api.add_router("", training_router)
api.add_router("", templates_router)
api.add_router("", workspaces_router)
