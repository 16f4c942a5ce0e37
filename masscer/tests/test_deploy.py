"""The production settings pass Django's deployment checklist."""
from __future__ import annotations

import secrets

from masscer.testing.processes import child_env, manage


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
