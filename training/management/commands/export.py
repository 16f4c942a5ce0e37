"""`manage.py export --agent SLUG --format FORMAT`: stream an agent's dataset.

Formats: openai-jsonl (validated like OpenAI's format check), records, alpaca, sharegpt, csv.
`--split 0.1 --seed 42 --output data.jsonl` writes data.train.jsonl and data.validation.jsonl,
with no document or conversation on both sides. What was skipped, and why, goes to stderr.
"""
from __future__ import annotations

import sys
from contextlib import ExitStack
from pathlib import Path
from typing import IO, Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from agents.selectors import agent_by_slug
from training.export import FORMATS, MAX_EXAMPLE_TOKENS, PARTS, STATUSES, ExportReport, export_file, export_stream
from workspaces.services import workspace_personal

from ._common import cli_user


def split_paths(output: str, *, fmt: str) -> dict[str, Path]:
    """data.jsonl → data.train.jsonl and data.validation.jsonl; data → the format's extension."""
    path = Path(output)
    if not path.suffix:
        return {part: path.with_name(export_file(fmt=fmt, stem=path.name, part=part).name) for part in PARTS}
    return {part: path.with_name(f"{path.stem}.{part}{path.suffix}") for part in PARTS}


def extension_mismatch(output: str, *, fmt: str) -> str:
    """A note when the name the user chose says another kind of file than the format writes."""
    suffix = Path(output).suffix.lstrip(".").lower()
    expected = export_file(fmt=fmt, stem="data")
    if not suffix or suffix == expected.extension:
        return ""
    return f"Note: {fmt} is written as {expected.media_type} (.{expected.extension}), not .{suffix}."


def fraction(value: str) -> float:
    number = float(value)
    if not 0 < number < 1:
        raise ValueError(value)
    return number


class Command(BaseCommand):
    help = "Export an agent's completions (OpenAI fine-tuning JSONL, records, Alpaca, ShareGPT or CSV)."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--agent", required=True)
        parser.add_argument("--format", choices=FORMATS, default="openai-jsonl", dest="fmt")
        parser.add_argument("--status", choices=STATUSES, default="approved")
        parser.add_argument("--user", help="account that owns the agent (default: $MASSCER_CLI_USER or 'demo')")
        parser.add_argument("--output", "-o", help="write to this file instead of stdout")
        parser.add_argument(
            "--split", type=fraction, default=0.0, metavar="FRACTION",
            help="put this fraction of the rows (whole sources) in a validation file; needs --output",
        )
        parser.add_argument("--seed", type=int, default=0, help="seed of the split (default 0)")
        parser.add_argument(
            "--max-tokens", type=int, default=MAX_EXAMPLE_TOKENS,
            help=f"skip OpenAI examples over this many tokens (default {MAX_EXAMPLE_TOKENS:,})",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        workspace = workspace_personal(user=cli_user(options["user"]))
        agent = agent_by_slug(workspace_id=workspace.pk, slug=options["agent"])
        if agent is None:
            raise CommandError(f"No agent '{options['agent']}'.")
        if options["split"] and not options["output"]:
            raise CommandError("--split writes two files: give --output (e.g. --output data.jsonl).")
        report = ExportReport()
        pieces = export_stream(
            agent=agent,
            fmt=options["fmt"],
            status=options["status"],
            split=options["split"],
            seed=options["seed"],
            max_tokens=options["max_tokens"],
            report=report,
        )
        if options["output"] and (note := extension_mismatch(options["output"], fmt=options["fmt"])):
            self.stderr.write(note)
        if options["split"]:
            targets = split_paths(options["output"], fmt=options["fmt"])
        elif options["output"]:
            targets = {"train": Path(options["output"])}
        else:
            targets = {}
        with ExitStack() as stack:
            handles: dict[str, IO[str]] = {
                part: stack.enter_context(path.open("w", encoding="utf-8", newline=""))
                for part, path in targets.items()
            }
            for part, text in pieces:
                (handles.get(part) or sys.stdout).write(text)
        for part, path in targets.items():
            self.stderr.write(f"Wrote {report.written[part]} examples to {path}.")
        for line in report.lines():
            self.stderr.write(line)
