"""Prometheus metrics at /metrics: model calls as they happen, the record as it stands.

Two kinds, kept apart so that both are right with several web and worker processes:

- Per-call counters (calls by outcome, tokens, latency; pair generation and the judge pass
  in families of their own) are counted in whichever process makes the call, mostly llm
  workers, in prometheus_client's multiprocess mode: each process writes its counts to
  files in PROMETHEUS_MULTIPROC_DIR (set by the settings) and /metrics adds up every file
  there. Every process that is to be counted must share that directory.
- Everything the database or the broker knows (jobs and completions by status, failed
  extractions, queue depth) is read when /metrics is scraped (`StateCollector`), so it
  needs no process to keep count.

/metrics is not public: with MASSCER_METRICS_TOKEN set it wants `Authorization: Bearer
<token>`; without one it answers loopback clients only (not through a proxy).
"""
from __future__ import annotations

import hmac
import ipaddress
import logging
import os
import re
import socket
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from django.conf import settings
from django.db import DatabaseError
from django.db.models import Count
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.views.decorators.http import require_GET
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest, values
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import Collector

from masscer import endpoint
from masscer.lib import llm

logger = logging.getLogger(__name__)

# A request relayed by a proxy on the same machine arrives from loopback too: it is not one.
FORWARDING_HEADERS = ("HTTP_X_FORWARDED_FOR", "HTTP_FORWARDED", "HTTP_X_REAL_IP")
# Model latencies: a fast hosted model in under a second, the embedded one in minutes.
LATENCY_BUCKETS = (0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0, 600.0)


_HOST = re.sub(r"[^A-Za-z0-9.-]", "-", socket.gethostname())


def _process_id() -> str:
    """Host and pid: the containers of one deployment share the directory and each has a pid 1."""
    return f"{_HOST}-{os.getpid()}"


if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
    # Before any metric is made: their values live in files named by this id.
    values.ValueClass = values.MultiProcessValue(_process_id)

MODEL_CALLS = Counter(
    "masscer_model_calls",
    "Pair-generation model calls by outcome (ok, truncated, invalid_output, rate_limited, "
    "transient_error, permanent_error, error) and mode (live or batch).",
    ["outcome", "mode"],
)
MODEL_TOKENS = Counter(
    "masscer_model_tokens", "Tokens of pair-generation calls, by kind (prompt or completion).", ["kind", "mode"]
)
MODEL_CALL_SECONDS = Histogram(
    "masscer_model_call_seconds", "Latency of live pair-generation calls.", ["outcome"], buckets=LATENCY_BUCKETS
)
# The judge pass (#15) in families of its own, so that the pair-generation series keep their
# meaning: every request the endpoint saw is the sum of the two.
JUDGE_CALLS = Counter(
    "masscer_judge_calls",
    "Judge-pass model calls by outcome (as for pair generation) and mode (live or batch).",
    ["outcome", "mode"],
)
JUDGE_TOKENS = Counter(
    "masscer_judge_tokens", "Tokens of judge-pass calls, by kind (prompt or completion).", ["kind", "mode"]
)
JUDGE_CALL_SECONDS = Histogram(
    "masscer_judge_call_seconds", "Latency of live judge-pass calls.", ["outcome"], buckets=LATENCY_BUCKETS
)
# What a call is for -> its (calls, tokens, latency) families.
FAMILIES = {
    "generate": (MODEL_CALLS, MODEL_TOKENS, MODEL_CALL_SECONDS),
    "judge": (JUDGE_CALLS, JUDGE_TOKENS, JUDGE_CALL_SECONDS),
}
Result = llm.Reply | llm.JudgeReply | BaseException


# --- recording model calls -------------------------------------------------------------------


def call_outcome(result: Result) -> str:
    if isinstance(result, llm.Reply | llm.JudgeReply):
        if result.finish_reason == "length":  # cut off (and so, often, unparsable too)
            return "truncated"
        return "invalid_output" if result.parse_error else "ok"
    if isinstance(result, llm.LLMTransientError):
        return "rate_limited" if result.status_code == 429 else "transient_error"
    return "permanent_error" if isinstance(result, llm.LLMPermanentError) else "error"


def record_call(
    result: Result, *, seconds: float | None = None, mode: str = "live", purpose: str = "generate"
) -> None:
    """Count one model call: its outcome, its tokens (a reply's), its latency (when timed).

    `purpose` is "generate" (pair generation) or "judge" (the judge pass).
    """
    try:
        _count_call(result, seconds, mode, purpose)
    except Exception:  # counting must never cost a paid reply (a full disk, an unwritable folder)
        logger.warning("could not count a model call in the metrics", exc_info=True)


def _count_call(result: Result, seconds: float | None, mode: str, purpose: str) -> None:
    calls, tokens, latency = FAMILIES[purpose]
    outcome = call_outcome(result)
    calls.labels(outcome=outcome, mode=mode).inc()
    if isinstance(result, llm.Reply | llm.JudgeReply):
        tokens.labels(kind="prompt", mode=mode).inc(result.usage.prompt_tokens)
        tokens.labels(kind="completion", mode=mode).inc(result.usage.completion_tokens)
    if seconds is not None:
        latency.labels(outcome=outcome).observe(seconds)


@dataclass
class Call:
    reply: llm.Reply | llm.JudgeReply | None = None


@contextmanager
def model_call(purpose: str = "generate") -> Iterator[Call]:
    """Time the model call in the block and count it: set `call.reply` to the reply, or let the error out."""
    call = Call()
    started = time.perf_counter()
    try:
        yield call
    except Exception as exc:
        record_call(exc, seconds=time.perf_counter() - started, purpose=purpose)
        raise
    if call.reply is not None:
        record_call(call.reply, seconds=time.perf_counter() - started, purpose=purpose)


# --- what the record says, read at scrape time ------------------------------------------------


def _counts_by_status(model: Any) -> dict[str, int]:
    counts = {value: 0 for value in model.Status.values}
    for row in model.objects.order_by().values("status").annotate(n=Count("pk")):
        counts[row["status"]] = row["n"]
    return counts


def _status_family(name: str, documentation: str, counts: dict[str, int]) -> GaugeMetricFamily:
    family = GaugeMetricFamily(name, documentation, labels=["status"])
    for status, count in counts.items():
        family.add_metric([status], count)
    return family


def queue_names() -> list[str]:
    """The queues tasks are routed to (CELERY_TASK_ROUTES)."""
    return sorted({route["queue"] for route in settings.CELERY_TASK_ROUTES.values()})


def queue_depths() -> dict[str, int] | None:
    """Messages waiting in each queue; None when the broker cannot tell (down, or another kind)."""
    url = settings.CELERY_BROKER_URL
    try:
        if url.startswith(("redis://", "rediss://", "unix://")):
            return _redis_depths(url)
        if url.startswith("filesystem://"):
            return _folder_depths(Path(settings.CELERY_BROKER_TRANSPORT_OPTIONS["data_folder_in"]))
    except Exception as exc:  # the scrape still answers, without this family
        logger.warning("could not read the queue depths from the broker: %s", exc)
    return None


def _redis_depths(url: str) -> dict[str, int]:
    import redis

    options = settings.CELERY_BROKER_TRANSPORT_OPTIONS
    prefix = options.get("global_keyprefix", "")
    # kombu keeps a queue's messages of priority p > 0 in a list of their own, "<queue>\x06\x16<p>".
    steps = options.get("priority_steps", [0, 3, 6, 9])
    timeout = settings.MASSCER_HEALTH_TIMEOUT
    client = redis.Redis.from_url(url, socket_timeout=timeout, socket_connect_timeout=timeout)
    try:
        with client.pipeline(transaction=False) as pipe:
            for queue in queue_names():
                for step in steps:
                    pipe.llen(prefix + (f"{queue}\x06\x16{step}" if step else queue))
            lengths = pipe.execute()
    finally:
        client.close()
    names = queue_names()
    return {queue: sum(lengths[i * len(steps) : (i + 1) * len(steps)]) for i, queue in enumerate(names)}


def _folder_depths(folder: Path) -> dict[str, int]:
    """kombu's filesystem transport: one file per message, named "<time>_<uuid>.<queue>.msg"."""
    counts = dict.fromkeys(queue_names(), 0)
    for entry in os.scandir(folder):
        queue = entry.name.partition(".")[2].removesuffix(".msg")
        if queue in counts:
            counts[queue] += 1
    return counts


def _record_families() -> list[GaugeMetricFamily]:
    from django.apps import apps

    job, completion = apps.get_model("training", "TrainingJob"), apps.get_model("training", "Completion")
    document = apps.get_model("documents", "Document")
    failed = document.objects.filter(status=document.Status.FAILED).count()
    return [
        _status_family("masscer_jobs", "Training jobs by status.", _counts_by_status(job)),
        _status_family("masscer_completions", "Completions by review status.", _counts_by_status(completion)),
        GaugeMetricFamily("masscer_extraction_failures", "Documents whose text extraction failed.", value=failed),
    ]


class StateCollector(Collector):
    """Gauges from the database and the broker, read at each scrape (right across processes)."""

    def collect(self) -> Iterable[GaugeMetricFamily]:
        try:
            families = _record_families()
        except DatabaseError as exc:  # the scrape still answers (the call counters), without these
            logger.warning("could not read the job and completion counts: %s", exc)
            families = []
        yield from families
        depths = queue_depths()
        if depths is not None:
            family = GaugeMetricFamily("masscer_queue_depth", "Tasks waiting in each broker queue.", labels=["queue"])
            for queue, depth in depths.items():
                family.add_metric([queue], depth)
            yield family
        yield from _learned_limit_families()


def _learned_limit_families() -> list[GaugeMetricFamily]:
    """Each model's learned limit on calls in flight (MASSCER_LLM_ADAPTIVE_CONCURRENCY), from Redis."""
    limits = endpoint.learned_limits()
    if not limits:
        return []
    family = GaugeMetricFamily(
        "masscer_model_concurrency_limit", "Learned limit on model calls in flight, by model.", labels=["model"]
    )
    for model, limit in sorted(limits.items()):
        family.add_metric([model], limit)
    return [family]


def exposition() -> bytes:
    """Every process's call counters (from the shared directory) and the state, as Prometheus text."""
    registry = CollectorRegistry()
    directory = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if directory and os.path.isdir(directory):
        MultiProcessCollector(registry, path=directory)
    else:  # counters of this process alone (multiprocess mode off)
        for family in FAMILIES.values():
            for metric in family:
                registry.register(metric)
    registry.register(StateCollector())
    return generate_latest(registry)


# --- the endpoint ---------------------------------------------------------------------------------


def refusal(request: HttpRequest) -> JsonResponse | None:
    """Why this request may not read the metrics (a 401 or 403 to send), or None if it may."""
    token = settings.MASSCER_METRICS_TOKEN
    if token:
        scheme, _, given = request.headers.get("Authorization", "").partition(" ")
        if scheme.lower() == "bearer" and hmac.compare_digest(given.strip().encode(), token.encode()):
            return None
        detail = "The metrics need Authorization: Bearer <MASSCER_METRICS_TOKEN>."
        response = JsonResponse({"detail": detail}, status=401)
        response["WWW-Authenticate"] = 'Bearer realm="metrics"'
        return response
    relayed = any(request.META.get(header) for header in FORWARDING_HEADERS)
    if _is_loopback(request.META.get("REMOTE_ADDR", "")) and not relayed:
        return None
    detail = "The metrics answer loopback clients only; set MASSCER_METRICS_TOKEN to scrape them from elsewhere."
    return JsonResponse({"detail": detail}, status=403)


def _is_loopback(address: str) -> bool:
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    mapped = getattr(ip, "ipv4_mapped", None)  # ::ffff:127.0.0.1 from a dual-stack socket
    return ip.is_loopback or (mapped is not None and mapped.is_loopback)


@require_GET
def metrics_view(request: HttpRequest) -> HttpResponse:
    refused = refusal(request)
    if refused is not None:
        return refused
    response = HttpResponse(exposition(), content_type=CONTENT_TYPE_LATEST)
    response["Cache-Control"] = "no-store"
    return response
