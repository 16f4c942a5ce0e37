"""`manage.py train PATH --count N --agent SLUG`: queue a job and follow it to the end."""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

from django.core.exceptions import ValidationError
from django.core.management.base import BaseCommand, CommandError, CommandParser
from tqdm import tqdm

from agents.services import agent_get_or_create
from conversations.models import Conversation
from conversations.services import conversations_import
from documents.services import document_create_from_path
from training.models import TrainingJob
from training.question_types import DEFAULT_TYPE, DIFFICULTIES, QUESTION_TYPES, parse_types
from training.services import job_create, job_summary
from training.services.jobs import MAX_SEED_EXAMPLES

from ._common import cli_user
from ._estimate import print_estimate

# After this long with nothing picked up, tell the user the workers may not be running.
NO_WORKER_HINT_SECONDS = 20
# How often the progress line looks at the job: its end is shown at most this late.
FOLLOW_SECONDS = 0.05
# Files read as chat exports (OpenAI messages, ShareGPT, ChatGPT export); the rest are documents.
CONVERSATION_SUFFIXES = {".json", ".jsonl", ".zip"}


class Command(BaseCommand):
    help = (
        "Train an agent from documents or conversation files: create N question/answer completions "
        "via the Celery workers."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "path",
            nargs="+",
            help="PDF, DOCX, Markdown, text or HTML file(s), or conversation files (.json, .jsonl, .zip)",
        )
        parser.add_argument("--count", "-n", type=int, required=True, help="number of completions (N)")
        parser.add_argument("--agent", action="append", required=True, help="agent slug (repeatable)")
        parser.add_argument("--user", help="account to work as (default: $MASSCER_CLI_USER or 'demo')")
        parser.add_argument("--model", default="")
        parser.add_argument("--temperature", type=float)
        parser.add_argument("--top-p", type=float, dest="top_p")
        parser.add_argument("--max-tokens", type=int, dest="max_tokens")
        parser.add_argument("--frequency-penalty", type=float, dest="frequency_penalty")
        parser.add_argument("--stop", action="append", default=[], help="stop sequence (repeatable)")
        parser.add_argument("--instructions", default="", help="audience, language, style ...")
        parser.add_argument(
            "--style",
            choices=TrainingJob.Style.values,
            default=TrainingJob.Style.SYNTHESIZE,
            help="synthesize new pairs, or mine the questions users asked (conversations only)",
        )
        parser.add_argument(
            "--redact", action="store_true", help="mask e-mails, phone and card numbers before the model sees text"
        )
        parser.add_argument(
            "--judge",
            action=argparse.BooleanOptionalAction,
            default=None,
            help="score each pair with a judge call and replace those below the threshold "
            "(default: on unless the model is the embedded one)",
        )
        parser.add_argument(
            "--judge-threshold",
            type=int,
            default=4,
            dest="judge_threshold",
            help="the lowest judge faithfulness (1-5) a pair may have (default 4)",
        )
        parser.add_argument(
            "--types",
            default="",
            help="kinds of question and their shares, e.g. factual=2,procedural=1 (default: factual); "
            f"kinds: {', '.join(QUESTION_TYPES)}",
        )
        parser.add_argument("--audience", default="", help="who asks the questions, e.g. 'new customers'")
        parser.add_argument(
            "--difficulty", default="", choices=[key for key in DIFFICULTIES if key], help="how hard the questions are"
        )
        parser.add_argument("--template", default="", help="the workspace's prompt template of this name")
        parser.add_argument(
            "--seed-examples",
            type=int,
            default=0,
            dest="seed_examples",
            help=f"show the model up to K approved completions of the agents as examples (0-{MAX_SEED_EXAMPLES})",
        )
        parser.add_argument(
            "--batch",
            action="store_true",
            help="send the model calls through the OpenAI batches API: half the price, results within 24 hours",
        )
        parser.add_argument(
            "--estimate", action="store_true", help="print the chunks, calls, tokens and cost it would take, and stop"
        )
        parser.add_argument("--json", action="store_true", help="print the summary as one JSON object")
        parser.add_argument("--no-wait", action="store_true", help="queue the job and return at once")
        parser.add_argument("--timeout", type=float, default=0, help="stop following after this many seconds")

    def handle(self, *args: Any, **options: Any) -> None:
        if options["estimate"]:
            paths = [Path(p) for p in options["path"]]
            for path in paths:
                if not path.is_file():
                    raise CommandError(f"No such file: {path}")
            print_estimate(self, paths, options, CONVERSATION_SUFFIXES)
            return
        user = cli_user(options["user"])
        try:
            job = self._create_job(user, options)
        except ValidationError as exc:
            raise CommandError(" ".join(exc.messages)) from exc
        if options["no_wait"]:
            self._print(job, options["json"])
            return
        if options["batch"]:
            self.stderr.write(f"Job {job.pk} runs in batch mode: results can take up to 24 hours (--no-wait returns).")
        job = self._follow(job, options)
        self._print(job, options["json"])
        # A completed job that made nothing is as much a failure to the caller as a failed one.
        if job.status == TrainingJob.Status.FAILED or job.outcome == TrainingJob.Outcome.NO_COMPLETIONS:
            sys.exit(1)
        if not job.is_finished:
            sys.exit(2)

    def _create_job(self, user: Any, options: dict[str, Any]) -> TrainingJob:
        question_types = parse_types(options["types"])  # before any file is stored: a typo leaves nothing
        paths = [Path(p) for p in options["path"]]
        for path in paths:
            if not path.is_file():
                raise CommandError(f"No such file: {path}")
        agents = [agent_get_or_create(owner=user, slug=slug)[0] for slug in options["agent"]]
        documents = [
            document_create_from_path(owner=user, path=path)
            for path in paths
            if path.suffix.lower() not in CONVERSATION_SUFFIXES
        ]
        conversations = [
            conversation
            for path in paths
            if path.suffix.lower() in CONVERSATION_SUFFIXES
            for conversation in self._import(user, path)
        ]
        return job_create(
            owner=user,
            count=options["count"],
            agents=agents,
            documents=documents,
            conversations=conversations,
            style=options["style"],
            redact=options["redact"],
            model=options["model"],
            temperature=options["temperature"],
            top_p=options["top_p"],
            max_tokens=options["max_tokens"],
            frequency_penalty=options["frequency_penalty"],
            stop=options["stop"],
            instructions=options["instructions"],
            mode=TrainingJob.Mode.BATCH if options["batch"] else TrainingJob.Mode.LIVE,
            judge=options["judge"],
            judge_threshold=options["judge_threshold"],
            question_types=question_types,
            audience=options["audience"],
            difficulty=options["difficulty"],
            template=options["template"],
            seed_examples=options["seed_examples"],
        )

    def _import(self, user: Any, path: Path) -> list[Any]:
        report = conversations_import(owner=user, data=path.read_bytes(), filename=path.name)
        for problem in report.problems:
            self.stderr.write(f"{path.name}: skipped conversation {problem.index_or_id}: {problem.reason}")
        if not report.imported:
            raise CommandError(f"{path.name}: no conversation could be imported.")
        self.stderr.write(f"{path.name}: imported {len(report.imported)} conversation(s) ({report.format}).")
        return list(Conversation.objects.filter(pk__in=[c.id for c in report.imported]).order_by("pk"))

    def _follow(self, job: TrainingJob, options: dict[str, Any]) -> TrainingJob:
        started = time.monotonic()
        hinted = False
        quiet = options["json"] or not sys.stderr.isatty() and options["verbosity"] < 2
        bar = tqdm(total=job.requested_count, unit="qa", file=sys.stderr, disable=quiet, dynamic_ncols=True)
        with bar:
            while True:
                job.refresh_from_db()
                bar.n = job.created_count
                bar.set_postfix_str(f"{job.status}, {job.calls} calls", refresh=True)
                if job.is_finished:
                    return job
                waited = time.monotonic() - started
                if not hinted and job.status == TrainingJob.Status.QUEUED and waited > NO_WORKER_HINT_SECONDS:
                    hinted = True
                    self.stderr.write("No worker has picked the job up yet: is `make worker` running?")
                if options["timeout"] and waited > options["timeout"]:
                    self.stderr.write(f"Still {job.status} after {options['timeout']:g} s; job {job.pk} goes on.")
                    return job
                time.sleep(FOLLOW_SECONDS)

    def _print(self, job: TrainingJob, as_json: bool) -> None:
        job.refresh_from_db()
        summary = job_summary(job)
        if as_json:
            self.stdout.write(json.dumps(summary))
            return
        lines = [
            f"Job {summary['job_id']}: {summary['outcome_label']}",
            f"  completions: {summary['completions_created']} of {summary['requested']}",
            f"  model calls: {summary['model_calls']}  tokens: {summary['prompt_tokens']} prompt"
            f" + {summary['completion_tokens']} completion",
            f"  elapsed: {summary['elapsed_seconds']} s",
        ]
        mix = summary["type_mix"]
        if set(mix) != {DEFAULT_TYPE}:
            lines.append("  types: " + ", ".join(f"{key} {n['made']} of {n['asked']}" for key, n in mix.items()))
        if summary["shortfall"]:
            lines.append(f"  shortfall: {summary['shortfall']} ({summary['shortfall_reasons']})")
        if summary["error"]:
            lines.append(f"  error: {summary['error']}")
        if summary["next_step"]:
            lines.append(f"  next step: {summary['next_step']}")
        self.stdout.write("\n".join(lines))
