"""The Celery application: JSON-only, settings read from Django's CELERY_* names."""
from __future__ import annotations

import os
from typing import Any

from celery import Celery
from celery.signals import task_postrun, task_prerun

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "masscer.settings")

app = Celery("masscer")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()


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