"""Login with a throttle: repeated failures for one account or address are refused for a while."""
from __future__ import annotations

from typing import Any

from django.conf import settings
from django.contrib.auth.views import LoginView
from django.core.cache import cache
from django.http import HttpRequest, HttpResponse


def _keys(request: HttpRequest) -> list[str]:
    address = request.META.get("REMOTE_ADDR", "unknown")
    username = (request.POST.get("username") or "").strip().lower()[:150]
    return [f"login-fail:addr:{address}", f"login-fail:user:{username}"]


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
