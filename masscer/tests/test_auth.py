"""Logins are throttled; passwords are validated."""
from __future__ import annotations

import pytest
from django.contrib.auth.password_validation import validate_password
from django.core.cache import cache
from django.core.exceptions import ValidationError

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def clean_cache():
    cache.clear()
    yield
    cache.clear()


def test_repeated_failed_logins_are_refused_for_a_while(client, alice, settings) -> None:
    settings.MASSCER_LOGIN_FAILURES = 3
    for _ in range(3):
        response = client.post("/accounts/login/", {"username": "alice", "password": "wrong"})
        assert response.status_code == 200
    blocked = client.post("/accounts/login/", {"username": "alice", "password": "alice-Secret-123"})
    assert blocked.status_code == 429
    assert "Too many failed logins" in blocked.content.decode()
    assert "_auth_user_id" not in client.session


def test_a_good_login_still_works_below_the_limit(client, alice) -> None:
    client.post("/accounts/login/", {"username": "alice", "password": "wrong"})
    response = client.post("/accounts/login/", {"username": "alice", "password": "alice-Secret-123"})
    assert response.status_code == 302
    assert client.session["_auth_user_id"] == str(alice.pk)


def test_weak_passwords_are_refused() -> None:
    with pytest.raises(ValidationError):
        validate_password("password123")
