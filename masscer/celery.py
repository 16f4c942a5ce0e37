"""The Celery application: JSON-only, settings read from Django's CELERY_* names."""
from __future__ import annotations

import os

from celery import Celery

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "masscer.settings")

app = Celery("masscer")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()
