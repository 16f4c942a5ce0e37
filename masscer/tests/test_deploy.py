"""The production settings pass Django's deployment checklist."""
from __future__ import annotations

import secrets

from testing.processes import child_env, manage


def test_check_deploy_is_clean_with_production_settings(tmp_path) -> None:
    env = child_env(
        DJANGO_DEBUG="0",
        DJANGO_SECRET_KEY=secrets.token_urlsafe(64),
        DJANGO_ALLOWED_HOSTS="masscer.example.com",
        DATABASE_URL=f"sqlite:///{tmp_path / 'deploy.sqlite3'}",
        CELERY_BROKER_URL="redis://127.0.0.1:6379/0",
        MASSCER_CACHE_URL="redis://127.0.0.1:6379/1",
        MASSCER_VAR_DIR=str(tmp_path),
    )
    result = manage("check", "--deploy", "--fail-level", "WARNING", env=env, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "no issues" in result.stdout


def test_debug_off_without_a_secret_key_refuses_to_start(tmp_path) -> None:
    env = child_env(DJANGO_DEBUG="0", MASSCER_VAR_DIR=str(tmp_path))
    env.pop("DJANGO_SECRET_KEY", None)
    result = manage("check", env=env, timeout=120)
    assert result.returncode != 0
    assert "DJANGO_SECRET_KEY" in result.stderr


def test_production_is_the_default_when_django_debug_is_unset(tmp_path) -> None:
    env = child_env(DJANGO_SECRET_KEY=secrets.token_urlsafe(64), MASSCER_VAR_DIR=str(tmp_path))
    env.pop("DJANGO_DEBUG", None)
    code = "import django; django.setup(); from django.conf import settings; print('DEBUG', settings.DEBUG)"
    result = manage("shell", "-c", code, env=env, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "DEBUG False" in result.stdout


def test_an_unset_secret_key_is_refused_with_what_to_do(tmp_path) -> None:
    env = child_env(MASSCER_VAR_DIR=str(tmp_path))
    for name in ("DJANGO_DEBUG", "DJANGO_SECRET_KEY"):
        env.pop(name, None)
    result = manage("check", env=env, timeout=120)
    assert result.returncode != 0
    assert "DJANGO_SECRET_KEY is not set" in result.stderr
    assert "DJANGO_DEBUG=1" in result.stderr
