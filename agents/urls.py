from __future__ import annotations

from importlib import import_module

from django.urls import path

from . import views

app_name = "agents"
urlpatterns = [
    path("", views.agent_list, name="list"),
    path("new/", views.agent_new, name="new"),
    path("<int:pk>/", views.agent_detail, name="detail"),
    path("<int:pk>/edit/", views.agent_edit, name="edit"),
    path("<int:pk>/material/", views.agent_material, name="material"),
    path("<int:pk>/why/", views.agent_explain, name="explain"),
    path("<int:pk>/export/", views.agent_export, name="export"),
]

# The playground (agents:playground) has its own module; its routes join this namespace when it exists.
try:
    urlpatterns += import_module("agents.playground_urls").urlpatterns
except ModuleNotFoundError as exc:
    if exc.name != "agents.playground_urls":
        raise
