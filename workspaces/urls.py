from __future__ import annotations

from django.urls import path

from . import views

app_name = "workspaces"
urlpatterns = [
    path("", views.workspace_list, name="list"),
    path("tokens/", views.token_list, name="tokens"),
    path("tokens/<int:pk>/revoke/", views.token_revoke, name="token_revoke"),
    path("<int:pk>/", views.workspace_detail, name="detail"),
    path("<int:pk>/members/", views.member_add, name="member_add"),
    path("<int:pk>/members/<int:user_id>/remove/", views.member_remove, name="member_remove"),
    path("<int:pk>/invitations/<int:invitation_id>/withdraw/", views.invitation_withdraw, name="invitation_withdraw"),
    path("invitations/<int:pk>/accept/", views.invitation_answer, {"answer": "accept"}, name="invitation_accept"),
    path("invitations/<int:pk>/decline/", views.invitation_answer, {"answer": "decline"}, name="invitation_decline"),
]
