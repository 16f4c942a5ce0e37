from __future__ import annotations

from django.conf import settings
from django.db import models


class Agent(models.Model):
    workspace = models.ForeignKey("workspaces.Workspace", on_delete=models.CASCADE, related_name="agents")
    owner = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="agents")
    name = models.CharField(max_length=200)
    slug = models.SlugField(max_length=100)
    system_prompt = models.TextField()
    model = models.CharField(max_length=200, blank=True, help_text="Empty: the server's default model.")
    temperature = models.FloatField(null=True, blank=True)
    top_p = models.FloatField(null=True, blank=True)
    max_tokens = models.PositiveIntegerField(null=True, blank=True)
    frequency_penalty = models.FloatField(null=True, blank=True)
    # Tokens of approved material put into the agent's context per turn (empty: the default).
    context_budget = models.PositiveIntegerField(null=True, blank=True)
    # Chats held with the agent (its /v1 endpoint and the playground) are kept as conversations.
    log_chats = models.BooleanField(default=False)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["name", "id"]
        constraints = [
            models.UniqueConstraint(fields=["workspace", "slug"], name="agent_unique_slug_per_workspace")
        ]

    def __str__(self) -> str:
        return self.name
