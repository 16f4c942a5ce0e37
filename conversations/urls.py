from __future__ import annotations

from django.urls import path

from . import views

app_name = "conversations"
urlpatterns = [
    path("", views.conversation_list, name="list"),
    path("new/", views.conversation_new, name="new"),
    path("import/", views.conversation_import, name="import"),
    path("imports/<int:pk>/", views.import_progress, name="import_progress"),
    path("<int:pk>/", views.conversation_detail, name="detail"),
    path("<int:pk>/edit/", views.conversation_edit, name="edit"),
    path("<int:pk>/delete/", views.conversation_remove, name="delete"),
    path("<int:pk>/review/", views.conversation_review, name="review"),
    path("<int:pk>/turn/", views.conversation_turn, name="turn"),
]
