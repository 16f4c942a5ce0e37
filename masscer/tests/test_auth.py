"""Logins are throttled, across processes when the cache is Redis; passwords are validated."""
from __future__ import annotations

import os
import time
from collections.abc import Iterator
from typing import Any

import pytest
import redis
from django.contrib.auth.password_validation import validate_password
from django.core.cache import cache
from django.core.exceptions import ImproperlyConfigured, ValidationError
from django.db import connection

from testing.processes import REDIS_HOST, REDIS_PORT, child_env, database_url, manage, port_open

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


def test_the_cache_is_per_process_unless_a_redis_url_is_given(monkeypatch) -> None:
    from masscer.settings import _caches

    monkeypatch.delenv("MASSCER_CACHE_URL", raising=False)
    assert _caches()["default"]["BACKEND"] == "django.core.cache.backends.locmem.LocMemCache"
    monkeypatch.setenv("MASSCER_CACHE_URL", "redis://:hunter2@cache:6379/1")
    monkeypatch.setenv("MASSCER_CACHE_KEY_PREFIX", "site-a")
    assert _caches()["default"] == {
        "BACKEND": "django.core.cache.backends.redis.RedisCache",
        "LOCATION": "redis://:hunter2@cache:6379/1",
        "KEY_PREFIX": "site-a",
    }
    monkeypatch.setenv("MASSCER_CACHE_URL", "memcached://:hunter2@cache:11211")
    with pytest.raises(ImproperlyConfigured, match="must start with redis://") as refused:
        _caches()
    assert "hunter2" not in str(refused.value)


# --- one throttle for every web process ------------------------------------------------------------

REDIS_CACHE_URL = f"redis://{REDIS_HOST}:{REDIS_PORT}/13"

# A second web process: its own Django, its own cache connection, the same database.
LOGIN_AS_ALICE = """
from django.test import Client
response = Client().post("/accounts/login/", {"username": "alice", "password": "alice-Secret-123"})
print("STATUS", response.status_code)
"""


@pytest.fixture
def redis_cache(settings: Any) -> Iterator[dict[str, str]]:
    """The cache on the shared Redis (db 13) under a prefix of this test's own; removed afterwards."""
    if not port_open(REDIS_HOST, REDIS_PORT):
        message = f"Redis is not reachable at {REDIS_HOST}:{REDIS_PORT}"
        if os.environ.get("CI"):
            pytest.fail(message + " and CI is set: the shared-throttle tests must run")
        pytest.skip(message)
    prefix = f"masscer-test-{os.getpid()}-{time.monotonic_ns()}"
    settings.CACHES = {
        "default": {
            "BACKEND": "django.core.cache.backends.redis.RedisCache",
            "LOCATION": REDIS_CACHE_URL,
            "KEY_PREFIX": prefix,
        }
    }
    yield {"MASSCER_CACHE_URL": REDIS_CACHE_URL, "MASSCER_CACHE_KEY_PREFIX": prefix}
    server = redis.Redis.from_url(REDIS_CACHE_URL)
    for key in server.scan_iter(f"{prefix}:*"):
        server.delete(key)


def login_in_another_process(tmp_path: Any, **cache_env: str) -> int:
    env = child_env(
        DATABASE_URL=database_url(connection.settings_dict),
        MASSCER_VAR_DIR=str(tmp_path),
        MASSCER_LOGIN_FAILURES="3",
        CELERY_BROKER_URL="memory://",
        **cache_env,
    )
    if not cache_env:
        env.pop("MASSCER_CACHE_URL", None)
    result = manage("shell", "-c", LOGIN_AS_ALICE, env=env, timeout=120)
    assert result.returncode == 0, result.stderr
    return int(result.stdout.split("STATUS", 1)[1].split()[0])


@pytest.mark.django_db(transaction=True)
def test_failures_counted_by_one_process_refuse_a_login_in_another(
    client, alice, settings, redis_cache, tmp_path
) -> None:
    settings.MASSCER_LOGIN_FAILURES = 3
    for _ in range(3):
        assert client.post("/accounts/login/", {"username": "alice", "password": "wrong"}).status_code == 200
    # The right password, from a process that has seen none of the failures itself.
    assert login_in_another_process(tmp_path, **redis_cache) == 429
    # Control: with a cache of its own (the old per-process default) it would have let her in.
    assert login_in_another_process(tmp_path) == 302


@pytest.mark.django_db(transaction=True)
def test_a_process_below_the_limit_lets_the_right_password_in(client, alice, settings, redis_cache, tmp_path) -> None:
    settings.MASSCER_LOGIN_FAILURES = 3
    assert client.post("/accounts/login/", {"username": "alice", "password": "wrong"}).status_code == 200
    assert login_in_another_process(tmp_path, **redis_cache) == 302


def fail(client, username: str, address: str, times: int, **headers: str) -> None:
    for _ in range(times):
        client.post("/accounts/login/", {"username": username, "password": "wrong"}, REMOTE_ADDR=address, **headers)


def test_a_guesser_at_one_address_does_not_lock_others_out(client, alice, bob, settings) -> None:
    settings.MASSCER_LOGIN_FAILURES = 3
    fail(client, "alice", "203.0.113.7", 3)
    locked = client.post(
        "/accounts/login/", {"username": "alice", "password": "alice-Secret-123"}, REMOTE_ADDR="203.0.113.7"
    )
    assert locked.status_code == 429
    # bob at the same address, and alice at her own, still log in.
    bob_there = client.post(
        "/accounts/login/", {"username": "bob", "password": "bob-Secret-123"}, REMOTE_ADDR="203.0.113.7"
    )
    assert bob_there.status_code == 302
    client.logout()
    alice_home = client.post(
        "/accounts/login/", {"username": "alice", "password": "alice-Secret-123"}, REMOTE_ADDR="198.51.100.1"
    )
    assert alice_home.status_code == 302


def test_behind_a_trusted_proxy_the_forwarded_client_address_counts(client, alice, settings) -> None:
    settings.MASSCER_LOGIN_FAILURES = 3
    settings.MASSCER_CLIENT_ADDRESS_HEADER = "X-Forwarded-For"
    settings.MASSCER_TRUSTED_PROXIES = ["10.0.0.2"]
    # Everyone arrives from the proxy 10.0.0.2; the guesser is 203.0.113.7.
    fail(client, "alice", "10.0.0.2", 3, HTTP_X_FORWARDED_FOR="203.0.113.7")
    guesser = client.post(
        "/accounts/login/", {"username": "alice", "password": "alice-Secret-123"},
        REMOTE_ADDR="10.0.0.2", HTTP_X_FORWARDED_FOR="203.0.113.7",
    )
    assert guesser.status_code == 429
    alice_at_home = client.post(
        "/accounts/login/", {"username": "alice", "password": "alice-Secret-123"},
        REMOTE_ADDR="10.0.0.2", HTTP_X_FORWARDED_FOR="198.51.100.1",
    )
    assert alice_at_home.status_code == 302


def test_a_forwarded_header_from_an_untrusted_peer_is_ignored(client, alice, settings) -> None:
    settings.MASSCER_LOGIN_FAILURES = 3
    settings.MASSCER_CLIENT_ADDRESS_HEADER = "X-Forwarded-For"
    settings.MASSCER_TRUSTED_PROXIES = ["10.0.0.2"]
    # A guesser who writes a new X-Forwarded-For each time is still counted by its own address.
    for n in range(3):
        client.post(
            "/accounts/login/", {"username": "alice", "password": "wrong"},
            REMOTE_ADDR="203.0.113.7", HTTP_X_FORWARDED_FOR=f"192.0.2.{n}",
        )
    again = client.post(
        "/accounts/login/", {"username": "alice", "password": "alice-Secret-123"},
        REMOTE_ADDR="203.0.113.7", HTTP_X_FORWARDED_FOR="192.0.2.99",
    )
    assert again.status_code == 429
