"""Create the demo login and agent once and print how to log in.

`make run` calls this at every start: an existing demo account keeps its password (so a
restart does not log the browser out), unless --reset-password is given.
"""
from __future__ import annotations

import os
from typing import Any

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandParser

from agents.services import agent_get_or_create

DEMO_USER = "demo"


class Command(BaseCommand):
    help = "Create the demo account (once) and print its login."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--reset-password", action="store_true", help="set the demo password again")

    def handle(self, *args: Any, **options: Any) -> None:
        password = os.environ.get("MASSCER_DEMO_PASSWORD", "demo-masscer-2026")
        user, created = get_user_model().objects.get_or_create(
            username=DEMO_USER, defaults={"is_staff": True, "is_superuser": True}
        )
        if created or options["reset_password"]:
            user.set_password(password)
            user.save()
            shown = password
        else:
            shown = "(unchanged; `manage.py demo_setup --reset-password` sets it again)"
        agent_get_or_create(owner=user, slug="support")
        web = f"http://127.0.0.1:{os.environ.get('MASSCER_WEB_PORT', '8000')}"
        self.stdout.write(
            self.style.SUCCESS(
                f"\nDemo login  ->  {web}/   user: demo   password: {shown}\n"
                f"Admin       ->  {web}/admin/\n"
                "CLI         ->  .venv/bin/python manage.py train FILE --count 10 --agent support\n"
            )
        )
