"""`manage.py export --agent SLUG --format FORMAT`: stream an agent's dataset.

Formats: openai-jsonl (validated like OpenAI's format check), records, alpaca, sharegpt, csv.
`--split 0.1 --seed 42 --output data.jsonl` writes data.train.jsonl and data.validation.jsonl,
with no document or conversation on both sides. What was skipped, and why, goes to stderr.

`manage.py export --conversations [--format openai-multiturn|sharegpt-multiturn] [--reviewed all]
[--tag T] [--ids 1,2]`: whole conversations of the user's workspace as multi-turn training data.
"""
from __future__ import annotations

import sys
from contextlib import ExitStack
from pathlib import Path
from typing import IO, Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from agents.selectors import agent_by_slug
from conversations.models import Conversation
from training import conversation_export
from training.export import (
    CONVERSATION_FORMATS,
    FORMATS,
    MAX_EXAMPLE_TOKENS,
    PARTS,
    STATUSES,
    ExportReport,
    export_file,
    export_stream,
)
from training.question_types import QUESTION_TYPES
from workspaces.models import Workspace
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
        parser.add_argument("--agent", help="the agent whose completions to export")
        parser.add_argument(
            "--conversations", action="store_true", help="export whole conversations (multi-turn) instead"
        )
        parser.add_argument("--format", choices=FORMATS + CONVERSATION_FORMATS, dest="fmt")
        parser.add_argument("--reviewed", choices=conversation_export.REVIEWED, default="reviewed",
                            help="with --conversations: only those marked reviewed (default), or all")
        parser.add_argument("--tag", default="", help="with --conversations: only those with this tag")
        parser.add_argument("--ids", default="", help="with --conversations: only these ids, e.g. 4,5,9")
        parser.add_argument("--status", choices=STATUSES, default="approved")
        parser.add_argument(
            "--type", choices=list(QUESTION_TYPES), default="", dest="question_type",
            help="only this kind of question (default: all)",
        )
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
        if options["conversations"] == bool(options["agent"]):
            raise CommandError("Give --agent SLUG, or --conversations for whole conversations.")
        if options["conversations"]:
            self._conversations(workspace, options)
            return
        options["fmt"] = options["fmt"] or "openai-jsonl"
        if options["fmt"] not in FORMATS:
            raise CommandError(f"{options['fmt']} is for --conversations; an agent exports {', '.join(FORMATS)}.")
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
            question_type=options["question_type"],
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

    def _conversations(self, workspace: Workspace, options: dict[str, Any]) -> None:
        fmt = options["fmt"] or "openai-multiturn"
        if fmt not in CONVERSATION_FORMATS:
            raise CommandError(f"--conversations exports {', '.join(CONVERSATION_FORMATS)}, not {fmt}.")
        if options["split"]:
            raise CommandError("--split is for an agent's completions.")
        try:
            ids = [int(part) for part in options["ids"].split(",") if part.strip()]
        except ValueError as exc:
            raise CommandError("--ids takes conversation ids separated by commas, e.g. 4,5,9.") from exc
        rows = conversation_export.conversations_selected(
            Conversation.objects.filter(workspace=workspace), reviewed=options["reviewed"], ids=ids
        )
        report = ExportReport(unit="conversation")
        lines = conversation_export.conversation_export_lines(
            conversations=rows, fmt=fmt, tag=options["tag"], max_tokens=options["max_tokens"], report=report
        )
        with ExitStack() as stack:
            out: IO[str] = sys.stdout
            if options["output"]:
                out = stack.enter_context(Path(options["output"]).open("w", encoding="utf-8", newline=""))
            for text in lines:
                out.write(text)
        if options["output"]:
            self.stderr.write(f"Wrote {report.written['train']} conversations to {options['output']}.")
        for line in report.lines():
            self.stderr.write(line)
