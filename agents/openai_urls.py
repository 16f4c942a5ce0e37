"""The OpenAI-compatible endpoint of agents, mounted at ``/v1/`` (see ``agents.openai_views``)."""
from __future__ import annotations

from django.urls import path

from . import openai_views

app_name = "openai"
urlpatterns = [
    path("models", openai_views.models, name="models"),
    path("models/<path:model>", openai_views.model_detail, name="model"),
    path("chat/completions", openai_views.chat_completions, name="chat_completions"),
    path("completions", openai_views.completions, name="completions"),
]
