"""The Celery application: JSON-only, settings read from Django's CELERY_* names."""
from __future__ import annotations

import logging
import os
from typing import Any

from celery import Celery
from celery.signals import setup_logging, task_postrun, task_prerun, worker_init

from masscer.lib.green import green_process

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "masscer.settings")

app = Celery("masscer")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()

# The log context each running task bound (masscer.logs), by task id, undone when it ends.
_log_tokens: dict[str, Any] = {}


@setup_logging.connect
def _use_django_logging(**kwargs: Any) -> None:
    """Workers log as the web does (settings.LOGGING: JSON in production), not in Celery's format."""
    import logging.config

    from django.conf import settings

    logging.config.dictConfig(settings.LOGGING)


@task_prerun.connect
def _bind_task_ids(
    sender: Any = None, task_id: str | None = None, args: Any = None, kwargs: Any = None, **_: Any
) -> None:
    """Every record a task writes carries its name, its id and the ids it was given (job, work item ...)."""
    from masscer import logs

    if task_id is not None and sender is not None:
        fields = logs.task_fields(sender, args, kwargs)
        _log_tokens[task_id] = logs.bind(task=sender.name, task_id=task_id, **fields)


@task_postrun.connect
def _unbind_task_ids(task_id: str | None = None, **_: Any) -> None:
    from masscer import logs

    token = _log_tokens.pop(task_id, None) if task_id is not None else None
    if token is not None:
        logs.unbind(token)


@task_prerun.connect
@task_postrun.connect
def _close_old_connections(sender: Any = None, **kwargs: Any) -> None:
    """Drop broken or expired DB connections around a task, as Django does around a request.

    Celery's fixup (with CELERY_DB_REUSE_MAX) keeps connections between tasks; this closes
    one that failed or outlived CONN_MAX_AGE, so a restarted database costs one task, not all.
    """
    request = getattr(sender, "request", None)
    if request is not None and getattr(request, "is_eager", False):
        return
    from django.db import close_old_connections

    close_old_connections()


@task_postrun.connect
def _close_greenlet_connections(sender: Any = None, **kwargs: Any) -> None:
    """Under `-P gevent` close the task's own database connections when it ends.

    Django keeps a connection per thread, and there a thread is a greenlet, one per task: its
    connection is not reused by the next task but lingered until garbage collection, and 64
    calls in flight ran PostgreSQL out of connections ("too many clients") within a job.
    Closed, it goes back to the worker's connection pool (settings: PostgreSQL in a green process).
    """
    request = getattr(sender, "request", None)
    if not green_process() or (request is not None and getattr(request, "is_eager", False)):
        return
    from django.db import connections

    connections.close_all()


@worker_init.connect
def _warm_up_model_client(**kwargs: Any) -> None:
    """Set up the model endpoint's SDK client before the first task, not inside it.

    The openai SDK and its HTTP stack import lazily on first use (about 0.3 s of CPU here):
    paid inside the first task, it holds back every thread of a fresh llm worker's first
    wave of calls. Nothing is sent to the endpoint.
    """
    from django.conf import settings

    if not settings.MASSCER_LLM_BASE_URL:
        return
    from masscer.endpoint import llm_config
    from masscer.lib import llm

    try:
        llm.warm_up(llm_config())
    except Exception:  # a bad endpoint setting is reported by the first call, clearly
        logging.getLogger(__name__).warning("could not set up the model client at start-up", exc_info=True)
