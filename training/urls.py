from __future__ import annotations

from django.urls import path

from . import export_views, review_views, template_views, views

app_name = "training"
urlpatterns = [
    path("", views.job_list, name="jobs"),
    path("new/", views.job_new, name="new"),
    path("estimate/", views.job_estimate, name="estimate"),
    path("<int:pk>/", views.job_detail, name="job"),
    path("<int:pk>/progress/", views.job_progress, name="progress"),
    path("<int:pk>/cancel/", views.job_cancel_view, name="cancel"),
    path("<int:pk>/retry/", views.job_retry_view, name="retry"),
    path("review/", review_views.review_queue, name="review"),
    path("review/bulk/", review_views.review_bulk, name="review_bulk"),
    path("completions/<int:pk>/", review_views.completion_detail, name="completion"),
    path("completions/<int:pk>/review/", review_views.completion_review_view, name="completion_review"),
    path("completions/<int:pk>/rule/", review_views.assignment_rule_view, name="assignment_rule"),
    path("conversations/export/", export_views.conversations_export, name="conversations_export"),
    path("chunks/document/<int:pk>/", views.document_chunks, name="document_chunks"),
    path("chunks/conversation/<int:pk>/", views.conversation_chunks, name="conversation_chunks"),
    path("templates/", template_views.template_list, name="templates"),
    path("templates/new/", template_views.template_new, name="template_new"),
    path("templates/<int:pk>/", template_views.template_detail, name="template"),
    path("templates/<int:pk>/edit/", template_views.template_edit, name="template_edit"),
    path("templates/<int:pk>/delete/", template_views.template_delete_view, name="template_delete"),
]
