"""Login with a throttle: repeated failures for one account from one client address are refused
for a while.

Failures are counted per (account, client address), in the cache every web process shares
(MASSCER_CACHE_URL): a guesser at one address is stopped on the account it tries, while the
same account from another address, and other accounts from the same address, are not. The
second part matters behind a proxy, where every user would otherwise share the proxy's
address: with MASSCER_CLIENT_ADDRESS_HEADER set (e.g. X-Forwarded-For), the client address is
read from that header, but only when the request comes from one of MASSCER_TRUSTED_PROXIES;
anyone else could write the header themselves.
"""
from __future__ import annotations

import hashlib
from typing import Any

from django.conf import settings
from django.contrib.auth.views import LoginView
from django.core.cache import cache
from django.http import HttpRequest, HttpResponse


def client_address(request: HttpRequest) -> str:
    """The address of the client: the peer, or what a trusted proxy says the client was."""
    peer = request.META.get("REMOTE_ADDR", "") or "unknown"
    header = settings.MASSCER_CLIENT_ADDRESS_HEADER
    if not header or peer not in settings.MASSCER_TRUSTED_PROXIES:
        return peer
    forwarded = request.META.get("HTTP_" + header.upper().replace("-", "_"), "")
    # The proxy appends the address it saw: the last entry is the one it vouches for.
    hops = [hop.strip() for hop in forwarded.split(",") if hop.strip()]
    return hops[-1] if hops else peer


def _keys(request: HttpRequest) -> list[str]:
    username = (request.POST.get("username") or "").strip().lower()[:150]
    pair = f"{username}\0{client_address(request)}".encode()
    return [f"login-fail:{hashlib.sha256(pair).hexdigest()}"]


def _blocked(request: HttpRequest) -> bool:
    limit = settings.MASSCER_LOGIN_FAILURES
    return any((cache.get(key) or 0) >= limit for key in _keys(request))


def _record_failure(request: HttpRequest) -> None:
    window = settings.MASSCER_LOGIN_WINDOW_SECONDS
    for key in _keys(request):
        if cache.add(key, 1, window):
            continue
        try:
            cache.incr(key)
        except ValueError:  # expired between add and incr
            cache.set(key, 1, window)


class ThrottledLoginView(LoginView):
    def post(self, request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
        if _blocked(request):
            form = self.get_form()
            minutes = max(1, settings.MASSCER_LOGIN_WINDOW_SECONDS // 60)
            form.add_error(None, f"Too many failed logins. Try again in {minutes} minutes.")
            return self.render_to_response(self.get_context_data(form=form, throttled=True), status=429)
        response = super().post(request, *args, **kwargs)
        if not request.user.is_authenticated:
            _record_failure(request)
        return response
