"""Create the demo login and agent (idempotent) and print how to log in."""
from __future__ import annotations

import os
from typing import Any

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand

from agents.services import agent_get_or_create

DEMO_USER = "demo"


class Command(BaseCommand):
    help = "Create (or reset) the demo account and print its login."

    def handle(self, *args: Any, **options: Any) -> None:
        password = os.environ.get("MASSCER_DEMO_PASSWORD", "demo-masscer-2026")
        user, _ = get_user_model().objects.get_or_create(username=DEMO_USER)
        user.set_password(password)
        user.is_staff = True
        user.is_superuser = True
        user.save()
        agent_get_or_create(owner=user, slug="support")
        self.stdout.write(
            self.style.SUCCESS(
                "\nDemo login  ->  http://127.0.0.1:8000/   user: demo   password: " + password + "\n"
                "Admin       ->  http://127.0.0.1:8000/admin/\n"
                "CLI         ->  .venv/bin/python manage.py train FILE --count 10 --agent support\n"
            )
        )
