"""`manage.py import_conversations PATH [--format F] [--user U] [--json]`: import and report."""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from django.conf import settings
from django.contrib.auth import get_user_model
from django.contrib.auth.models import AbstractBaseUser
from django.core.exceptions import ValidationError
from django.core.management.base import BaseCommand, CommandError, CommandParser

from conversations.importers import FORMATS, ImportFormatError, ensure_size_within
from conversations.services import ImportReport, conversations_import

DEFAULT_CLI_USER = "demo"


def cli_user(username: str | None) -> AbstractBaseUser:
    """The account command-line work is done as (created on first use, no password).

    The same convention as training's `train` command; repeated here because conversations
    may not import training.
    """
    name = username or os.environ.get("MASSCER_CLI_USER") or DEFAULT_CLI_USER
    user, created = get_user_model().objects.get_or_create(username=name)
    if created:
        user.set_unusable_password()
        user.save(update_fields=["password"])
    return user


class Command(BaseCommand):
    help = "Import conversations (OpenAI messages JSON/JSONL, ShareGPT, ChatGPT export) and print a report."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("path", help="a .json, .jsonl or ChatGPT export .zip file")
        parser.add_argument("--format", choices=FORMATS, help="skip detection and read the file as this format")
        parser.add_argument("--user", help="account to import for (default: $MASSCER_CLI_USER or 'demo')")
        parser.add_argument("--json", action="store_true", help="print the report as one JSON object")

    def handle(self, *args: Any, **options: Any) -> None:
        path = Path(options["path"])
        data = self._read(path)
        user = cli_user(options["user"])
        try:
            report = conversations_import(owner=user, data=data, filename=path.name, fmt=options["format"])
        except ValidationError as exc:
            raise CommandError(" ".join(exc.messages)) from exc
        self.stdout.write(json.dumps(report.as_dict()) if options["json"] else _text(report))
        if not report.imported:
            raise CommandError("Nothing was imported.")

    def _read(self, path: Path) -> bytes:
        if not path.is_file():
            raise CommandError(f"No such file: {path}")
        try:
            # Checked before reading so an oversized file is never loaded into memory.
            ensure_size_within(path.stat().st_size, max_bytes=settings.MASSCER_MAX_UPLOAD_BYTES)
        except ImportFormatError as exc:
            raise CommandError(str(exc)) from exc
        return path.read_bytes()


def _text(report: ImportReport) -> str:
    lines = [f"Imported {len(report.imported)} conversation(s) from {report.filename} (format: {report.format})"]
    lines += [f"  #{item.id} {item.title!r}: {item.message_count} messages" for item in report.imported]
    if report.problems:
        lines.append(f"Problems ({len(report.problems)}):")
        lines += [f"  {problem.index_or_id}: {problem.reason}" for problem in report.problems]
    lines.append(f"Skipped parts (images, files, non-text content): {report.skipped_parts}")
    return "\n".join(lines)
