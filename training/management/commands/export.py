"""`manage.py export --agent SLUG --format openai-jsonl|records`: stream a dataset as JSON lines."""
from __future__ import annotations

import sys
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from agents.selectors import agent_by_slug
from training.export import FORMATS, STATUSES, export_lines
from workspaces.services import workspace_personal

from ._common import cli_user


class Command(BaseCommand):
    help = "Export an agent's completions as JSON lines (OpenAI fine-tuning format or full records)."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--agent", required=True)
        parser.add_argument("--format", choices=FORMATS, default="openai-jsonl", dest="fmt")
        parser.add_argument("--status", choices=STATUSES, default="approved")
        parser.add_argument("--user", help="account that owns the agent (default: $MASSCER_CLI_USER or 'demo')")
        parser.add_argument("--output", "-o", help="write to this file instead of stdout")

    def handle(self, *args: Any, **options: Any) -> None:
        workspace = workspace_personal(user=cli_user(options["user"]))
        agent = agent_by_slug(workspace_id=workspace.pk, slug=options["agent"])
        if agent is None:
            raise CommandError(f"No agent '{options['agent']}'.")
        lines = export_lines(agent=agent, fmt=options["fmt"], status=options["status"])
        count = 0
        if options["output"]:
            with open(options["output"], "w", encoding="utf-8") as handle:
                for line in lines:
                    handle.write(line)
                    count += 1
            self.stderr.write(f"Wrote {count} lines to {options['output']}.")
            return
        for line in lines:
            sys.stdout.write(line)

