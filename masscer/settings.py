"""One env-driven settings file.

Every knob is an environment variable with a sane default for the embedded stack
(SQLite in WAL mode and the kombu filesystem broker under var/, the local model on
loopback). Helpers fail loudly on malformed values instead of guessing.
"""
from __future__ import annotations

import logging
import os
from pathlib import Path
from urllib.parse import urlsplit

import dj_database_url
from django.core.exceptions import ImproperlyConfigured

from masscer import localmodel
from masscer.lib.green import green_process

BASE_DIR = Path(__file__).resolve().parent.parent


def env_str(name: str, default: str) -> str:
    return os.environ.get(name, default)


def env_int(name: str, default: int) -> int:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        return int(raw)
    except ValueError as exc:
        raise ImproperlyConfigured(f"{name} must be an integer, got {raw!r}") from exc


def env_float(name: str, default: float) -> float:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        return float(raw)
    except ValueError as exc:
        raise ImproperlyConfigured(f"{name} must be a number, got {raw!r}") from exc


def env_bool(name: str, default: bool) -> bool:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    lowered = raw.strip().lower()
    if lowered in {"1", "true", "yes", "on"}:
        return True
    if lowered in {"0", "false", "no", "off"}:
        return False
    raise ImproperlyConfigured(f"{name} must be a boolean (1/0, true/false), got {raw!r}")


def env_optional_float(name: str, default: float | None) -> float | None:
    """A number, or None when the variable is set but empty ("use the provider's default")."""
    raw = os.environ.get(name)
    if raw is None:
        return default
    return env_float(name, 0.0) if raw.strip() else None


def _is_loopback(url: str) -> bool:
    host = urlsplit(url).hostname or ""
    return host == "localhost" or host == "::1" or host.startswith("127.")


def env_list(name: str, default: list[str]) -> list[str]:
    raw = os.environ.get(name)
    if raw is None:
        return default
    return [item.strip() for item in raw.split(",") if item.strip()]


VAR_DIR = Path(env_str("MASSCER_VAR_DIR", str(BASE_DIR / "var")))

# Production is the default; development is the opt-in (`make` targets and the test run set
# DJANGO_DEBUG=1). Without DEBUG a real secret key is required: nothing falls back to a known one.
DEBUG = env_bool("DJANGO_DEBUG", False)
DEV_SECRET_KEY = "dev-only-insecure-key-change-me-in-production-0123456789"
SECRET_KEY = env_str("DJANGO_SECRET_KEY", DEV_SECRET_KEY if DEBUG else "")
if not DEBUG and (not SECRET_KEY or SECRET_KEY.startswith("dev-only")):
    raise ImproperlyConfigured(
        "DJANGO_SECRET_KEY is not set. In production set it to a long random value "
        "(python -c 'import secrets; print(secrets.token_urlsafe(50))'); for development "
        "set DJANGO_DEBUG=1 (make run, make test and the other make targets do)."
    )
ALLOWED_HOSTS = env_list("DJANGO_ALLOWED_HOSTS", ["localhost", "127.0.0.1", "[::1]", "testserver"])
CSRF_TRUSTED_ORIGINS = env_list("DJANGO_CSRF_TRUSTED_ORIGINS", [])
X_FRAME_OPTIONS = "DENY"
SECURE_CONTENT_TYPE_NOSNIFF = True
SECURE_REFERRER_POLICY = "same-origin"
if not DEBUG:
    # Production sits behind a TLS-terminating proxy that sets X-Forwarded-Proto.
    SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
    SECURE_SSL_REDIRECT = env_bool("DJANGO_SECURE_SSL_REDIRECT", True)
    # Prometheus scrapes over plain http from inside the deployment (the probes are answered
    # before this redirect anyway: masscer.middleware.ProbeMiddleware).
    SECURE_REDIRECT_EXEMPT = [r"^healthz$", r"^readyz$", r"^metrics$"]
    # Off only to try the production setup over plain http (no TLS proxy): never on the internet.
    SESSION_COOKIE_SECURE = CSRF_COOKIE_SECURE = env_bool("DJANGO_SECURE_COOKIES", True)
    SECURE_HSTS_SECONDS = env_int("DJANGO_SECURE_HSTS_SECONDS", 31_536_000)
    SECURE_HSTS_INCLUDE_SUBDOMAINS = True
    SECURE_HSTS_PRELOAD = env_bool("DJANGO_SECURE_HSTS_PRELOAD", True)

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "django_htmx",
    # Serves the API docs' Swagger UI from its own static files instead of a CDN (works offline).
    "ninja",
    "workspaces",
    "documents",
    "conversations",
    "agents",
    "training",
]

MIDDLEWARE = [
    # /healthz and /readyz, answered before host validation and the HTTPS redirect.
    "masscer.middleware.ProbeMiddleware",
    "masscer.middleware.RequestIdMiddleware",
    "django.middleware.security.SecurityMiddleware",
    # Static files (the app's, the admin's, the API docs') straight from gunicorn, before sessions.
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    # Before the CSRF check, which reads the upload and would fail on too many files first.
    "masscer.middleware.UploadLimitMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "django_htmx.middleware.HtmxMiddleware",
]

ROOT_URLCONF = "masscer.urls"
WSGI_APPLICATION = "masscer.wsgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]


def _database() -> dict:
    url = env_str("DATABASE_URL", f"sqlite:///{VAR_DIR / 'db.sqlite3'}")
    # Connections are kept between requests and tasks (closed when broken or older than
    # this); a new PostgreSQL connection per task costs the worker and the server CPU.
    config = dj_database_url.parse(url, conn_max_age=env_int("MASSCER_DB_CONN_MAX_AGE", 300))
    if config["ENGINE"] == "django.db.backends.sqlite3":
        # WAL lets the web process read while workers write; IMMEDIATE takes the
        # write lock at BEGIN so concurrent writers queue instead of failing on upgrade.
        config["OPTIONS"] = {
            "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
            "transaction_mode": "IMMEDIATE",
            "timeout": 30,
        }
        # A file, not :memory:, so a Celery worker in another process sees the test data.
        # One file per test run, so parallel runs do not share (and corrupt) it.
        default_test_db = str(VAR_DIR / f"test-{os.getpid()}.sqlite3")
        config["TEST"] = {"NAME": env_str("MASSCER_TEST_SQLITE", default_test_db)}
    else:
        # Parallel PostgreSQL test runs on one server each need a database name of their own.
        config["TEST"] = {"NAME": env_str("MASSCER_TEST_DB_NAME", f"test_{config['NAME']}")}
        if green_process():
            # Under `celery worker -P gevent` each task is a greenlet with a connection of its own
            # (Django's are per thread) that ends with it (masscer.celery): a pool hands the
            # connections on from task to task instead of connecting for each one, one after the
            # other in the hub (about 4 ms each; 64 tasks starting together waited 0.3 s, B9).
            # Django's pool excludes persistent connections; a pooled connection is checked as it
            # is handed out, so one broken by a database restart costs no task.
            config["CONN_MAX_AGE"] = 0
            config["CONN_HEALTH_CHECKS"] = True
            config.setdefault("OPTIONS", {})["pool"] = {
                "min_size": 2,
                "max_size": env_int("MASSCER_DB_POOL_MAX", 100),
                "timeout": 30,
            }
    return config


DATABASES = {"default": _database()}
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
# What `collectstatic` fills and WhiteNoise serves without DEBUG. Not under MASSCER_VAR_DIR: the
# image collects at build time, and the var folder is a volume at run time.
STATIC_ROOT = Path(env_str("MASSCER_STATIC_ROOT", str(BASE_DIR / "staticfiles")))
STATICFILES_DIRS = [BASE_DIR / "static"]
# Development serves the files where they are, as they change; production serves hashed,
# compressed copies from STATIC_ROOT (a page naming a file that was not collected fails loudly).
WHITENOISE_AUTOREFRESH = DEBUG
WHITENOISE_USE_FINDERS = DEBUG
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {
        "BACKEND": "django.contrib.staticfiles.storage.StaticFilesStorage"
        if DEBUG
        else "whitenoise.storage.CompressedManifestStaticFilesStorage"
    },
}
# Uploads live outside the static root under random names (see documents.models).
MEDIA_ROOT = Path(env_str("MASSCER_MEDIA_ROOT", str(VAR_DIR / "uploads")))

LOGIN_URL = "/accounts/login/"
# Failed logins allowed per (account, client address) within the window, then refused.
# The failures are counted in the cache (see CACHES below).
MASSCER_LOGIN_FAILURES = env_int("MASSCER_LOGIN_FAILURES", 5)
# Behind a proxy: the header that carries the client's address (e.g. X-Forwarded-For), read
# only on requests from the proxies listed (their addresses as the web process sees them).
MASSCER_CLIENT_ADDRESS_HEADER = env_str("MASSCER_CLIENT_ADDRESS_HEADER", "")
MASSCER_TRUSTED_PROXIES = env_list("MASSCER_TRUSTED_PROXIES", ["127.0.0.1", "::1"])
MASSCER_LOGIN_WINDOW_SECONDS = env_int("MASSCER_LOGIN_WINDOW_SECONDS", 900)
LOGIN_REDIRECT_URL = "/"


def _caches() -> dict:
    """Per process by default; with several web processes or machines the login throttle only
    holds if they share one cache, so production sets MASSCER_CACHE_URL=redis://..."""
    url = env_str("MASSCER_CACHE_URL", "")
    if not url:
        return {"default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"}}
    scheme = url.split("://", 1)[0] if "://" in url else ""
    if scheme not in {"redis", "rediss", "unix"}:
        # The URL itself is not repeated: it may hold a password.
        got = f"a {scheme}:// URL" if scheme else "no scheme"
        raise ImproperlyConfigured(f"MASSCER_CACHE_URL must start with redis://, rediss:// or unix:// (got {got})")
    return {
        "default": {
            "BACKEND": "django.core.cache.backends.redis.RedisCache",
            "LOCATION": url,
            # Several deployments (or test runs) can share one Redis without sharing counters.
            "KEY_PREFIX": env_str("MASSCER_CACHE_KEY_PREFIX", "masscer"),
        }
    }


CACHES = _caches()

# --- Celery --------------------------------------------------------------------------
CELERY_BROKER_URL = env_str("CELERY_BROKER_URL", "filesystem://")
if CELERY_BROKER_URL.startswith("filesystem://"):
    _broker_dir = VAR_DIR / "broker"
    # kombu's filesystem transport expects its folders to exist.
    for _folder in ("queue", "processed", "control"):
        (_broker_dir / _folder).mkdir(parents=True, exist_ok=True)
    CELERY_BROKER_TRANSPORT_OPTIONS: dict = {
        "data_folder_in": str(_broker_dir / "queue"),
        "data_folder_out": str(_broker_dir / "queue"),
        "processed_folder": str(_broker_dir / "processed"),
        # Exchange bindings (broadcasts, `celery inspect`); kombu's default is ./control.
        "control_folder": str(_broker_dir / "control"),
        "store_processed": False,
    }
else:
    # Redelivery of unacknowledged messages; the lease sweeper re-queues much sooner.
    CELERY_BROKER_TRANSPORT_OPTIONS = {
        "visibility_timeout": env_int("CELERY_VISIBILITY_TIMEOUT", 3600),
        # How often a worker looks for unacknowledged messages of dead workers
        # (about interval x throttle seconds).
        "unacked_restore_interval": env_int("CELERY_UNACKED_RESTORE_INTERVAL", 10),
        "unacked_restore_throttle": env_int("CELERY_UNACKED_RESTORE_THROTTLE", 10),
    }
    if env_str("CELERY_BROKER_KEYPREFIX", ""):
        # Several deployments (or test runs) can share one Redis without seeing each other's queues.
        CELERY_BROKER_TRANSPORT_OPTIONS["global_keyprefix"] = env_str("CELERY_BROKER_KEYPREFIX", "")
CELERY_TASK_SERIALIZER = "json"
CELERY_RESULT_SERIALIZER = "json"
CELERY_ACCEPT_CONTENT = ["json"]
CELERY_TASK_IGNORE_RESULT = True
CELERY_TASK_ACKS_LATE = env_bool("CELERY_TASK_ACKS_LATE", True)
CELERY_TASK_REJECT_ON_WORKER_LOST = True
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
# Celery's Django fixup closes every DB connection after each task unless this is set;
# connections are then checked (and closed when broken or too old) around each task
# instead (masscer.celery).
CELERY_DB_REUSE_MAX = env_int("CELERY_DB_REUSE_MAX", 1000) or None
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
CELERY_TASK_ALWAYS_EAGER = env_bool("CELERY_TASK_ALWAYS_EAGER", False)
CELERY_TASK_ROUTES = {
    "documents.tasks.*": {"queue": "ingest"},
    "conversations.tasks.*": {"queue": "ingest"},
    "training.tasks.job_prepare_task": {"queue": "ingest"},
    "training.tasks.sweep_task": {"queue": "ingest"},
    "training.tasks.*": {"queue": "llm"},
}
CELERY_BEAT_SCHEDULE = {
    "sweep-expired-leases": {
        "task": "training.tasks.sweep_task",
        "schedule": env_float("MASSCER_SWEEP_SECONDS", 10.0),
    },
}
CELERY_BEAT_SCHEDULE_FILENAME = str(VAR_DIR / "celerybeat-schedule")

# --- The model -------------------------------------------------------------------------
# By default, the embedded local model that `make run` serves on loopback
# (masscer.localmodel: Qwen2.5-Coder-1.5B-Instruct in llama.cpp's server). Its defaults
# below suit a small instruct model on a few CPU cores; any other endpoint keeps the
# provider's own defaults.
MASSCER_LOCAL_MODEL_PORT = env_int("MASSCER_LOCAL_MODEL_PORT", localmodel.DEFAULT_PORT)
MASSCER_LOCAL_MODEL_URL = f"http://127.0.0.1:{MASSCER_LOCAL_MODEL_PORT}/v1"
MASSCER_LLM_BASE_URL = env_str("MASSCER_LLM_BASE_URL", MASSCER_LOCAL_MODEL_URL)
_EMBEDDED_MODEL = MASSCER_LLM_BASE_URL.rstrip("/") == MASSCER_LOCAL_MODEL_URL
MASSCER_LLM_API_KEY = env_str("MASSCER_LLM_API_KEY", "local")
MASSCER_LLM_MODEL = env_str("MASSCER_LLM_MODEL", localmodel.MODEL_ALIAS)
MASSCER_LLM_MODE = env_str("MASSCER_LLM_MODE", "chat")
if MASSCER_LLM_MODE not in {"chat", "completion"}:
    raise ImproperlyConfigured(f"MASSCER_LLM_MODE must be 'chat' or 'completion', got {MASSCER_LLM_MODE!r}")
# The embedded model writes about 9 tokens/s on 2 cores: a call of 10 pairs takes ~2.5 min.
MASSCER_LLM_TIMEOUT = env_float("MASSCER_LLM_TIMEOUT", 300.0 if _EMBEDDED_MODEL else 120.0)
# The sampling temperature of jobs that set none (empty: the provider's default). A small
# model keeps its evidence quotes verbatim far more often at a low temperature.
MASSCER_LLM_TEMPERATURE = env_optional_float("MASSCER_LLM_TEMPERATURE", 0.2 if _EMBEDDED_MODEL else None)
# The requested count as minItems/maxItems in the JSON schema: local servers turn the
# schema into a grammar, so a small model writes exactly N pairs; OpenAI's strict mode may
# refuse these keywords. On by default for loopback endpoints.
MASSCER_LLM_SCHEMA_COUNTS = env_bool("MASSCER_LLM_SCHEMA_COUNTS", _is_loopback(MASSCER_LLM_BASE_URL))
# Whether a new job has the judge pass (a second call scoring each pair) unless it says:
# on for a real provider, off for the embedded model (too slow to grade its own pairs).
MASSCER_JUDGE_DEFAULT = env_bool("MASSCER_JUDGE_DEFAULT", not _EMBEDDED_MODEL)
# Prices per 1M tokens, "model=input:output,..." e.g. "gpt-4o-mini=0.15:0.60".
MASSCER_LLM_PRICES = env_str("MASSCER_LLM_PRICES", "")
# The provider's limits for the endpoint, shared by all llm workers through Redis (0 = none);
# tightened at run time by the provider's x-ratelimit-limit-* headers.
MASSCER_LLM_RPM = env_int("MASSCER_LLM_RPM", 0)
MASSCER_LLM_TPM = env_int("MASSCER_LLM_TPM", 0)
# Model calls in flight at once across every worker (the provider's concurrency limit;
# 0: no limit). Shared through the rate limiter's Redis.
MASSCER_LLM_MAX_CONCURRENCY = env_int("MASSCER_LLM_MAX_CONCURRENCY", 0)
# Learn that limit instead when the provider's is unknown (off by default): it starts at
# MASSCER_LLM_ADAPTIVE_START, grows by one per limit's worth of calls taken, halves on a
# 429; MASSCER_LLM_MAX_CONCURRENCY (256 when 0) is its ceiling. Needs the same Redis.
MASSCER_LLM_ADAPTIVE_CONCURRENCY = env_bool("MASSCER_LLM_ADAPTIVE_CONCURRENCY", False)
MASSCER_LLM_ADAPTIVE_START = env_int("MASSCER_LLM_ADAPTIVE_START", 8)
MASSCER_RATELIMIT_REDIS_URL = env_str(
    "MASSCER_RATELIMIT_REDIS_URL", CELERY_BROKER_URL if CELERY_BROKER_URL.startswith("redis") else ""
)
# A worker thread waits in line for a slot at most this long; a longer wait hands the work
# back to the queue with that countdown instead of holding the thread.
MASSCER_RATELIMIT_MAX_WAIT = env_float("MASSCER_RATELIMIT_MAX_WAIT", 20.0)
# Batch mode (OpenAI files + batches): price factor on the batch discount and poll period.
MASSCER_BATCH_PRICE_FACTOR = env_float("MASSCER_BATCH_PRICE_FACTOR", 0.5)
MASSCER_BATCH_POLL_SECONDS = env_float("MASSCER_BATCH_POLL_SECONDS", 60.0)
# Playground retrieval: BM25 over approved material, or embeddings from the endpoint's
# /v1/embeddings when a model is named here.
MASSCER_EMBEDDINGS_MODEL = env_str("MASSCER_EMBEDDINGS_MODEL", "")
MASSCER_PLAYGROUND_EXAMPLES = env_int("MASSCER_PLAYGROUND_EXAMPLES", 5)
MASSCER_PLAYGROUND_CONTEXT_TOKENS = env_int("MASSCER_PLAYGROUND_CONTEXT_TOKENS", 1500)
MASSCER_PLAYGROUND_HISTORY_MESSAGES = env_int("MASSCER_PLAYGROUND_HISTORY_MESSAGES", 20)
MASSCER_PLAYGROUND_HISTORY_TOKENS = env_int("MASSCER_PLAYGROUND_HISTORY_TOKENS", 3000)
# A playground turn waits this long at most for a slot in the shared rate limit, else "busy, try again".
MASSCER_PLAYGROUND_MAX_WAIT = env_float("MASSCER_PLAYGROUND_MAX_WAIT", 5.0)

# --- Limits and pipeline knobs ----------------------------------------------------------
MASSCER_MAX_UPLOAD_BYTES = env_int("MASSCER_MAX_UPLOAD_BYTES", 50 * 1024 * 1024)
# Files in one upload request (the documents page and the conversation import take several).
# Django stops reading a request at the same number, so the extra files never reach the disk;
# masscer.middleware answers both cases with the reason (a page or JSON, status 400).
MASSCER_MAX_UPLOAD_FILES = env_int("MASSCER_MAX_UPLOAD_FILES", 20)
# A conversation file with more conversations than this is imported by a worker, with progress
# on the import page, instead of holding a web thread (10,000 conversations took a minute).
MASSCER_IMPORT_BACKGROUND_OVER = env_int("MASSCER_IMPORT_BACKGROUND_OVER", 500)
DATA_UPLOAD_MAX_NUMBER_FILES = MASSCER_MAX_UPLOAD_FILES
MASSCER_MAX_PAGES = env_int("MASSCER_MAX_PAGES", 2000)
MASSCER_MAX_DOCUMENT_TOKENS = env_int("MASSCER_MAX_DOCUMENT_TOKENS", 2_000_000)
MASSCER_CHUNK_TOKENS = env_int("MASSCER_CHUNK_TOKENS", 800)
MASSCER_CHUNK_OVERLAP = env_int("MASSCER_CHUNK_OVERLAP", 80)
MASSCER_MAX_COMPLETIONS_PER_JOB = env_int("MASSCER_MAX_COMPLETIONS_PER_JOB", 5000)
MASSCER_MAX_ACTIVE_JOBS_PER_USER = env_int("MASSCER_MAX_ACTIVE_JOBS_PER_USER", 5)
MASSCER_PAIRS_PER_CALL = env_int("MASSCER_PAIRS_PER_CALL", 10)
# A work item covers consecutive chunks of one document (its span) so that one call asks for
# at least this many pairs where chunks are small for their share of N: fewer, fuller calls
# (training.planning.plan_spans). 1 keeps one chunk per item whenever N allows it.
MASSCER_MIN_PAIRS_PER_CALL = env_int("MASSCER_MIN_PAIRS_PER_CALL", 5)
# The most tokens of source text one call carries (a span never grows beyond it). The embedded
# model's 4k context holds one chunk and a reply, so it keeps one chunk per item.
MASSCER_SPAN_MAX_TOKENS = env_int(
    "MASSCER_SPAN_MAX_TOKENS", MASSCER_CHUNK_TOKENS if _EMBEDDED_MODEL else 4 * MASSCER_CHUNK_TOKENS
)
# In a job's last wave of calls (its pending work items no more than its running ones, or
# all of them within MASSCER_LLM_MAX_CONCURRENCY), each call asks for one pair per five it
# needs beyond them: a rejected pair then costs no second call, which would run alone after
# everything else (false turns this off).
MASSCER_SPARE_PAIR_AT_END = env_bool("MASSCER_SPARE_PAIR_AT_END", True)
# Calls allowed per batch of pairs before a chunk gives up with a recorded shortfall.
MASSCER_CALLS_PER_BATCH = env_int("MASSCER_CALLS_PER_BATCH", 3)
# A chunk that gives up short hands its missing pairs to chunks of the job with unused text
# (training.services.handoff), so a job ends short only when every chunk is exhausted.
MASSCER_HAND_ON_SHORTFALL = env_bool("MASSCER_HAND_ON_SHORTFALL", True)
MASSCER_NEAR_DUPLICATE_JACCARD = env_float("MASSCER_NEAR_DUPLICATE_JACCARD", 0.8)
# A claimed work item or extraction is its worker's for this long, renewed every third of it
# while the worker lives (masscer.leases): a dead worker's work is taken over by the sweeper
# (every MASSCER_SWEEP_SECONDS) within about this plus one sweep.
MASSCER_LEASE_SECONDS = env_int("MASSCER_LEASE_SECONDS", 30)
# Batch rounds: a tick uploads and downloads batch files, which can take longer.
MASSCER_BATCH_LEASE_SECONDS = env_int("MASSCER_BATCH_LEASE_SECONDS", 300)
# How long a worker holding a model reply keeps trying to store it while the database is away.
MASSCER_DB_OUTAGE_SECONDS = env_float("MASSCER_DB_OUTAGE_SECONDS", 120.0)
# A pending work item nobody claimed for this long is re-sent (the broker may have lost it).
MASSCER_REQUEUE_AFTER_SECONDS = env_int("MASSCER_REQUEUE_AFTER_SECONDS", 45)
# How long a chunk keeps waiting for an unreachable or overloaded model before failing.
MASSCER_MODEL_UNREACHABLE_SECONDS = env_int("MASSCER_MODEL_UNREACHABLE_SECONDS", 600)
MASSCER_RETRY_BACKOFF_MAX = env_float("MASSCER_RETRY_BACKOFF_MAX", 60.0)
MASSCER_EXTRACT_CPU_SECONDS = env_int("MASSCER_EXTRACT_CPU_SECONDS", 120)
MASSCER_EXTRACT_MEMORY_BYTES = env_int("MASSCER_EXTRACT_MEMORY_BYTES", 2 * 1024**3)
# A long PDF (32 pages or more) is read by this many extraction children at once, each under
# the two limits above, so its last pages come about that many times sooner (1: one child).
MASSCER_EXTRACT_PROCESSES = env_int("MASSCER_EXTRACT_PROCESSES", 2)

DEFAULT_AGENT_SYSTEM_PROMPT = (
    "You are a helpful assistant. Answer accurately and concisely using the knowledge "
    "you were trained on; say so when you do not know."
)

# --- Health, metrics, logs ---------------------------------------------------------------
# Each /readyz check (database, migrations, broker, model) answers within this or fails.
MASSCER_HEALTH_TIMEOUT = env_float("MASSCER_HEALTH_TIMEOUT", 2.0)
# The model check's answer is reused this long: frequent probes must not load the model server.
MASSCER_HEALTH_MODEL_CACHE_SECONDS = env_float("MASSCER_HEALTH_MODEL_CACHE_SECONDS", 15.0)
# /metrics wants "Authorization: Bearer <this>"; unset, it answers loopback clients only.
MASSCER_METRICS_TOKEN = env_str("MASSCER_METRICS_TOKEN", "")
# Every process counts its model calls in files in PROMETHEUS_MULTIPROC_DIR (read from the
# environment by prometheus_client) and /metrics adds them up: the web and worker processes of
# one deployment share it. Exited processes' counts stay counted; emptying it while the whole
# deployment is stopped starts every count afresh (`make run` does).
os.environ.setdefault("PROMETHEUS_MULTIPROC_DIR", str(VAR_DIR / "metrics"))
Path(os.environ["PROMETHEUS_MULTIPROC_DIR"]).mkdir(parents=True, exist_ok=True)
# JSON lines in production, readable lines in development.
MASSCER_LOG_FORMAT = env_str("MASSCER_LOG_FORMAT", "text" if DEBUG else "json")
if MASSCER_LOG_FORMAT not in {"json", "text"}:
    raise ImproperlyConfigured(f"MASSCER_LOG_FORMAT must be 'json' or 'text', got {MASSCER_LOG_FORMAT!r}")
# One log line per web request (runserver writes its own in development).
MASSCER_ACCESS_LOG = env_bool("MASSCER_ACCESS_LOG", not DEBUG)
if MASSCER_LOG_FORMAT == "json":
    logging.captureWarnings(True)  # Python's warnings become JSON lines too, not stray text

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    # The request, task, job and work-item ids of what is running (masscer.logs) on every record.
    "filters": {"context": {"()": "masscer.logs.ContextFilter"}},
    "formatters": {
        "text": {"()": "masscer.logs.TextFormatter", "format": "%(asctime)s %(levelname)s %(name)s: %(message)s"},
        "json": {"()": "masscer.logs.JsonFormatter"},
    },
    "handlers": {
        "console": {"class": "logging.StreamHandler", "formatter": MASSCER_LOG_FORMAT, "filters": ["context"]}
    },
    "root": {"handlers": ["console"], "level": env_str("MASSCER_LOG_LEVEL", "INFO")},
    "loggers": {
        **{name: {"level": "WARNING"} for name in ("httpx", "httpx2", "openai")},
        # The filesystem transport has no host; kombu warns about it on every connection.
        "kombu.connection": {"level": "ERROR"},
    },
}
