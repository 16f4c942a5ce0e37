from __future__ import annotations

from django.contrib import admin
from django.urls import include, path
from django.views.generic import RedirectView

from masscer import health, metrics
from masscer.api import api
from masscer.auth import ThrottledLoginView

urlpatterns = [
    path("", RedirectView.as_view(pattern_name="documents:list", permanent=False)),
    path("admin/", admin.site.urls),
    path("api/", api.urls),
    path("v1/", include("agents.openai_urls")),  # OpenAI-compatible: chat with an agent from any client
    path("accounts/login/", ThrottledLoginView.as_view(), name="login"),
    path("accounts/", include("django.contrib.auth.urls")),
    path("documents/", include("documents.urls")),
    path("conversations/", include("conversations.urls")),
    path("jobs/", include("training.urls")),
    path("agents/", include("agents.urls")),
    path("workspaces/", include("workspaces.urls")),
    # Probes and metrics: no login (ProbeMiddleware answers the probes before anything else).
    path("healthz", health.healthz, name="healthz"),
    path("readyz", health.readyz, name="readyz"),
    path("metrics", metrics.metrics_view, name="metrics"),
]
