"""URL patterns of the agent playground, included into the ``agents`` namespace."""
from __future__ import annotations

from django.urls import path

from . import playground_views

urlpatterns = [
    path("<int:pk>/playground/", playground_views.playground, name="playground"),
    path("<int:pk>/playground/stream/", playground_views.playground_stream, name="playground_stream"),
]
