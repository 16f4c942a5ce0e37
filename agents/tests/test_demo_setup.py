"""`make run` runs demo_setup at every start: the demo login is made once, then left alone."""
from __future__ import annotations

from io import StringIO

import pytest
from django.contrib.auth import get_user_model
from django.core.management import call_command
from django.test import Client

pytestmark = pytest.mark.django_db


def demo_setup(*args: str) -> str:
    out = StringIO()
    call_command("demo_setup", *args, stdout=out)
    return out.getvalue()


def test_a_restart_keeps_the_demo_password_and_the_browser_logged_in() -> None:
    first = demo_setup()
    assert "password: demo-masscer-2026" in first
    browser = Client()
    assert browser.login(username="demo", password="demo-masscer-2026")
    demo = get_user_model().objects.get(username="demo")
    demo.set_password("my-own-Secret-42")
    demo.save()
    browser.force_login(demo)  # the session after the user changed their password

    again = demo_setup()

    assert "unchanged" in again and "demo-masscer-2026" not in again
    assert Client().login(username="demo", password="my-own-Secret-42")
    assert browser.get("/documents/").status_code == 200  # still logged in, not sent to the login page
    assert get_user_model().objects.filter(username="demo").count() == 1


def test_reset_password_sets_the_demo_password_again() -> None:
    demo_setup()
    demo = get_user_model().objects.get(username="demo")
    demo.set_password("forgotten-Secret-42")
    demo.save()
    assert "password: demo-masscer-2026" in demo_setup("--reset-password")
    assert Client().login(username="demo", password="demo-masscer-2026")
