from __future__ import annotations

from datetime import datetime

from django.conf import settings
from django.db import models
from django.db.models import Q

from .validation import next_step, question_key, same_question


class Chunk(models.Model):
    """A token-bounded slice of one source (a document or a conversation)."""

    document = models.ForeignKey(
        "documents.Document", null=True, blank=True, on_delete=models.CASCADE, related_name="chunks"
    )
    conversation = models.ForeignKey(
        "conversations.Conversation", null=True, blank=True, on_delete=models.CASCADE, related_name="chunks"
    )
    index = models.PositiveIntegerField()
    text = models.TextField()
    token_count = models.PositiveIntegerField()
    # {"pages": [first, last]} for documents, {"messages": [first, last]} for conversations.
    locator = models.JSONField(default=dict)
    start = models.PositiveIntegerField(default=0)
    end = models.PositiveIntegerField(default=0)
    content_hash = models.CharField(max_length=64)
    # A conversation's chunks are those of one version of it (`previews.conversation_version`):
    # a message added later makes a new version, split anew; older chunks stay for their completions.
    source_version = models.CharField(max_length=120, blank=True, default="")

    class Meta:
        ordering = ["document_id", "conversation_id", "index"]
        constraints = [
            models.CheckConstraint(
                condition=Q(document__isnull=False, conversation__isnull=True)
                | Q(document__isnull=True, conversation__isnull=False),
                name="chunk_has_one_source",
            ),
            models.UniqueConstraint(
                fields=["document", "index"], condition=Q(document__isnull=False), name="chunk_unique_doc_index"
            ),
            models.UniqueConstraint(
                fields=["conversation", "source_version", "index"],
                condition=Q(conversation__isnull=False),
                name="chunk_unique_conv_index",
            ),
        ]

    def __str__(self) -> str:
        return f"chunk {self.index} of {self.source_label}"

    @property
    def source_type(self) -> str:
        return "document" if self.document_id else "conversation"

    @property
    def source_label(self) -> str:
        if self.document_id:
            return f"document {self.document_id}"
        return f"conversation {self.conversation_id}"

    @property
    def locator_label(self) -> str:
        if "pages" in self.locator:
            first, last = self.locator["pages"]
            return f"p. {first}" if first == last else f"pp. {first}–{last}"
        if "messages" in self.locator:
            first, last = self.locator["messages"]
            return f"message {first}" if first == last else f"messages {first}–{last}"
        return ""


class TrainingJob(models.Model):
    class Status(models.TextChoices):
        QUEUED = "queued", "Queued"
        CHUNKING = "chunking", "Chunking"
        GENERATING = "generating", "Generating"
        COMPLETED = "completed", "Completed"
        FAILED = "failed", "Failed"
        CANCELLED = "cancelled", "Cancelled"

    class Style(models.TextChoices):
        SYNTHESIZE = "synthesize", "Synthesize new pairs"
        MINE = "mine", "Mine the questions users asked"

    class Mode(models.TextChoices):
        LIVE = "live", "Live calls"
        # OpenAI's batches API: half the price, results within 24 hours.
        BATCH = "batch", "Batch (cheaper, within 24 hours)"

    TRANSITIONS: dict[str, set[str]] = {
        Status.QUEUED: {Status.CHUNKING, Status.FAILED, Status.CANCELLED},
        Status.CHUNKING: {Status.GENERATING, Status.FAILED, Status.CANCELLED},
        Status.GENERATING: {Status.COMPLETED, Status.FAILED, Status.CANCELLED},
        # Retry: a failed job starts over from its sources; a completed one with a
        # shortfall, or a failed one with planned work, goes back to generating.
        Status.COMPLETED: {Status.GENERATING},
        Status.FAILED: {Status.QUEUED, Status.GENERATING},
        Status.CANCELLED: set(),
    }
    FINISHED = (Status.COMPLETED, Status.FAILED, Status.CANCELLED)
    # Work items run while the job generates, and already while it is planned from a document
    # still being read (`services.jobs.job_prepare`; it cannot finish before the last pass).
    ITEMS_RUN = (Status.CHUNKING, Status.GENERATING)

    class Outcome(models.TextChoices):
        """How a completed job really ended (see `outcome`); other statuses are their own outcome."""

        COMPLETED = "completed", "Completed"
        COMPLETED_WITH_SHORTFALL = "completed_with_shortfall", "Completed with shortfall"
        NO_COMPLETIONS = "no_completions", "No completions made"

    workspace = models.ForeignKey("workspaces.Workspace", on_delete=models.CASCADE, related_name="training_jobs")
    owner = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="training_jobs")
    documents = models.ManyToManyField("documents.Document", blank=True, related_name="training_jobs")
    conversations = models.ManyToManyField("conversations.Conversation", blank=True, related_name="training_jobs")
    agents = models.ManyToManyField("agents.Agent", blank=True, related_name="training_jobs")
    requested_count = models.PositiveIntegerField()
    style = models.CharField(max_length=20, choices=Style.choices, default=Style.SYNTHESIZE)
    mode = models.CharField(max_length=10, choices=Mode.choices, default=Mode.LIVE)
    redact = models.BooleanField(default=False)
    # The judge pass (services.judging): each accepted pair is scored 1-5; a pair whose
    # faithfulness is below `judge_threshold` is rejected and topped up like any other.
    judge = models.BooleanField(default=False)
    judge_threshold = models.PositiveSmallIntegerField(default=4)
    model = models.CharField(max_length=200)
    temperature = models.FloatField(null=True, blank=True)
    top_p = models.FloatField(null=True, blank=True)
    max_tokens = models.PositiveIntegerField(null=True, blank=True)
    frequency_penalty = models.FloatField(null=True, blank=True)
    stop = models.JSONField(default=list, blank=True)
    instructions = models.TextField(blank=True)
    # Question types and their shares, e.g. {"factual": 2, "procedural": 1} (`question_types`);
    # empty: factual only. N is spread over them with the largest-remainder rule.
    question_types = models.JSONField(default=dict, blank=True)
    # Who the questions are for (a persona line) and how hard they are ("", easy, medium, hard).
    audience = models.CharField(max_length=200, blank=True)
    difficulty = models.CharField(max_length=10, blank=True)
    # Up to this many approved completions of the job's agents go into the prompt as examples.
    seed_examples = models.PositiveSmallIntegerField(default=0)
    # The exact prompt template version the job's prompts are built from (null: the built-in
    # prompt). RESTRICT: a version a job used cannot be deleted, unless with the job itself.
    prompt_template = models.ForeignKey(
        "PromptTemplateVersion", null=True, blank=True, on_delete=models.RESTRICT, related_name="jobs"
    )

    status = models.CharField(max_length=20, choices=Status.choices, default=Status.QUEUED, db_index=True)
    error = models.TextField(blank=True)
    created_count = models.PositiveIntegerField(default=0)
    calls = models.PositiveIntegerField(default=0)
    prompt_tokens = models.PositiveBigIntegerField(default=0)
    completion_tokens = models.PositiveBigIntegerField(default=0)
    cost = models.DecimalField(max_digits=12, decimal_places=6, default=0)
    # Stop cleanly (with the reason recorded) once the job has cost this much.
    budget = models.DecimalField(max_digits=12, decimal_places=6, null=True, blank=True)
    shortfall = models.PositiveIntegerField(default=0)
    shortfall_reasons = models.JSONField(default=dict, blank=True)
    chunks_total = models.PositiveIntegerField(default=0)
    chunks_done = models.PositiveIntegerField(default=0)
    enqueued_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at", "-id"]
        indexes = [models.Index(fields=["workspace", "-created_at"])]

    def __str__(self) -> str:
        return f"job {self.pk} ({self.status})"

    @property
    def is_finished(self) -> bool:
        return self.status in self.FINISHED

    @property
    def outcome(self) -> str:
        """The status, with a completed job told apart by what it made: all it was asked for,
        fewer, or nothing (every door shows this, so nobody sees 0 completions under a green
        "Completed")."""
        if self.status != self.Status.COMPLETED:
            return self.status
        if self.created_count >= self.requested_count:
            return self.Outcome.COMPLETED.value
        if self.created_count > 0:
            return self.Outcome.COMPLETED_WITH_SHORTFALL.value
        return self.Outcome.NO_COMPLETIONS.value

    @property
    def outcome_label(self) -> str:
        if self.status != self.Status.COMPLETED:
            return self.get_status_display()
        return str(self.Outcome(self.outcome).label)

    @property
    def next_step(self) -> str | None:
        """What the user can do when a completed job made fewer than asked because of the model."""
        if self.status != self.Status.COMPLETED:
            return None
        return next_step(self.shortfall_reasons or {}, created=self.created_count, requested=self.requested_count)


class WorkItem(models.Model):
    """One chunk's share of a job: the unit a generation task claims with a lease."""

    class Status(models.TextChoices):
        PENDING = "pending", "Pending"
        RUNNING = "running", "Running"
        DONE = "done", "Done"
        FAILED = "failed", "Failed"
        CANCELLED = "cancelled", "Cancelled"

    job = models.ForeignKey(TrainingJob, on_delete=models.CASCADE, related_name="work_items")
    # The first chunk of the item's text; `span` consecutive chunks of the same source from it.
    chunk = models.ForeignKey(Chunk, on_delete=models.CASCADE, related_name="work_items")
    span = models.PositiveSmallIntegerField(default=1)
    # The kind of question this item asks for (a key of `question_types.QUESTION_TYPES`).
    question_type = models.CharField(max_length=20, default="factual")
    quota = models.PositiveIntegerField()
    status = models.CharField(max_length=20, choices=Status.choices, default=Status.PENDING, db_index=True)
    made = models.PositiveIntegerField(default=0)
    calls = models.PositiveIntegerField(default=0)
    attempts = models.PositiveIntegerField(default=0)
    # Why pairs were rejected or missing: {"evidence_not_found": 2, "invalid_output": 1, ...}.
    reasons = models.JSONField(default=dict, blank=True)
    # A few of the model's rejected replies, for the job page: at most validation.SAMPLES_PER_ITEM of
    # {"reason": key of REASON_LABELS, "text": the reply or the rejected pair, shortened}.
    # Written with the call's counters by the worker that holds the item's claim.
    samples = models.JSONField(default=list, blank=True)
    error = models.TextField(blank=True)
    lease_expires_at = models.DateTimeField(null=True, blank=True)
    enqueued_at = models.DateTimeField(null=True, blank=True)
    # Start of the current run of transient model errors; reset on every successful call.
    unavailable_since = models.DateTimeField(null=True, blank=True)
    # Batch mode: the last round whose result this item has taken in (so a round is
    # ingested once per item), and what the next request carries over from the last
    # reply: {"feedback": str | None, "per_call": int, "rejected": [question, ...]}. In both
    # modes it also keeps the paid pairs waiting for the judge: "held": [[q, a, e], ...] and
    # "held_model" (`services.judging`).
    batch_round = models.PositiveIntegerField(default=0)
    batch_state = models.JSONField(default=dict, blank=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["job", "chunk__index"]
        constraints = [
            models.UniqueConstraint(fields=["job", "chunk", "question_type"], name="workitem_unique_job_chunk_type")
        ]
        indexes = [models.Index(fields=["status", "lease_expires_at"])]

    def __str__(self) -> str:
        return f"job {self.job_id} chunk {self.chunk_id} ({self.status})"

    @classmethod
    def fresh_start(cls, now: datetime) -> dict[str, object]:
        """The fields that send an item back to work afresh (retry, regenerate): a new calls
        budget, no reasons, samples or error from the last run."""
        return {
            "status": cls.Status.PENDING,
            "calls": 0,
            "error": "",
            "reasons": {},
            "samples": [],
            "unavailable_since": None,
            "enqueued_at": now,
        }


class BatchRound(models.Model):
    """One provider batch of a batch-mode job: the next request of every unfinished item.

    Transitions (enforced by `training.batch`): pending → submitted (batch id known)
    → ingesting (claimed by one worker) → ingested; pending/submitted → pending again
    after a transient failure; any open status → failed (permanent error) or cancelled
    (the job stopped).
    """

    class Status(models.TextChoices):
        PENDING = "pending", "Waiting to be submitted"
        SUBMITTED = "submitted", "At the provider"
        INGESTING = "ingesting", "Results being taken in"
        INGESTED = "ingested", "Results taken in"
        FAILED = "failed", "Failed"
        CANCELLED = "cancelled", "Cancelled"

    OPEN = (Status.PENDING, Status.SUBMITTED, Status.INGESTING)

    job = models.ForeignKey(TrainingJob, on_delete=models.CASCADE, related_name="batch_rounds")
    number = models.PositiveIntegerField()
    status = models.CharField(max_length=20, choices=Status.choices, default=Status.PENDING, db_index=True)
    batch_id = models.CharField(max_length=200, blank=True)
    # {custom_id: {"item": work item id, "asked": pairs asked for}}
    requests = models.JSONField(default=dict, blank=True)
    # What the provider last said: status and request counts.
    provider_status = models.CharField(max_length=20, blank=True)
    request_counts = models.JSONField(default=dict, blank=True)
    error = models.TextField(blank=True)
    # Failures in a row (submit, poll, or rounds with requests to retry), for the backoff;
    # and since when submitting or polling has been failing.
    failures = models.PositiveIntegerField(default=0)
    unavailable_since = models.DateTimeField(null=True, blank=True)
    # When the poll task should next look at this round; a worker on it holds the lease.
    next_check_at = models.DateTimeField(null=True, blank=True)
    lease_expires_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    submitted_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["job", "number"]
        constraints = [models.UniqueConstraint(fields=["job", "number"], name="batchround_unique_job_number")]
        indexes = [models.Index(fields=["status", "next_check_at"])]

    def __str__(self) -> str:
        return f"job {self.job_id} batch round {self.number} ({self.status})"


class QuestionKeyField(models.CharField):
    """A completion's `question_key`, derived from its question whenever the row is inserted or
    saved (as `auto_now` derives a time), so no insert path can leave it out or stale: the llm
    worker's SQL (`hotsql.insert` calls `pre_save`), `bulk_create`, `save`. `QuerySet.update()`
    does not call it: an update of the question sets the key too (`services.completion_review`).
    """

    def pre_save(self, model_instance: models.Model, add: bool) -> str:
        key = question_key(model_instance.question)  # type: ignore[attr-defined]
        stored = getattr(model_instance, self.attname) or ""
        # A repeat stored before keys were unique keeps its suffixed key while its question stays.
        if not same_question(key, stored):
            setattr(model_instance, self.attname, key)
            return key
        return stored


class Completion(models.Model):
    class Status(models.TextChoices):
        PENDING = "pending", "Pending review"
        APPROVED = "approved", "Approved"
        REJECTED = "rejected", "Rejected"

    job = models.ForeignKey(TrainingJob, on_delete=models.CASCADE, related_name="completions")
    chunk = models.ForeignKey(Chunk, on_delete=models.PROTECT, related_name="completions")
    ordinal = models.PositiveIntegerField()
    question = models.TextField()
    # `validation.question_key(question)`: no two completions of a job ask the same question
    # (compared as the duplicate check compares them), whichever worker stores it first.
    question_key = QuestionKeyField(max_length=96, editable=False)
    answer = models.TextField()
    evidence = models.TextField()
    status = models.CharField(max_length=20, choices=Status.choices, default=Status.PENDING, db_index=True)
    model = models.CharField(max_length=200, blank=True)
    redacted = models.BooleanField(default=False)
    # The kind of question (copied from its work item); "" for completions made before types.
    question_type = models.CharField(max_length=20, blank=True, default="", db_index=True)
    # The judge's scores: {"faithfulness", "answerability", "usefulness": 1-5, "reasons": {...}},
    # or null when the pair was not judged.
    judge = models.JSONField(null=True, blank=True)
    edited = models.BooleanField(default=False)
    original_question = models.TextField(blank=True)
    original_answer = models.TextField(blank=True)
    reviewed_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    reviewed_at = models.DateTimeField(null=True, blank=True)
    # Set by near-duplicate detection across an agent's material; reviewers keep one or merge.
    duplicate_of = models.ForeignKey(
        "self", null=True, blank=True, on_delete=models.SET_NULL, related_name="duplicates"
    )
    agents = models.ManyToManyField("agents.Agent", through="Assignment", related_name="completions")
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["job_id", "chunk_id", "ordinal"]
        constraints = [
            # One work item writes a (job, chunk, question type)'s ordinals.
            models.UniqueConstraint(
                fields=["job", "chunk", "question_type", "ordinal"], name="completion_unique_job_chunk_type_ordinal"
            ),
            # The duplicate check and the insert as one step: a worker whose check ran before
            # another stored the same question has its row skipped (`hotsql.insert`'s `skip_on`).
            models.UniqueConstraint(fields=["job", "question_key"], name="completion_unique_job_question_key"),
        ]
        # The lists' orders (oldest or newest first, by status or not) are index walks, not sorts of
        # every row; with the job in them a page's ids (masscer.views.rows_ids_first) and the
        # workspace check come from the index alone. (job, status) answers the pagination counts.
        indexes = [
            models.Index(fields=["status", "created_at", "id", "job"], name="completion_status_created_idx"),
            models.Index(fields=["created_at", "id", "job"], name="completion_created_idx"),
            models.Index(fields=["job", "status"], name="completion_job_status_idx"),
        ]

    def __str__(self) -> str:
        return self.question[:80]


class Assignment(models.Model):
    """A completion attached to an agent, with the rule for using it in the agent's context."""

    class Rule(models.TextChoices):
        RETRIEVE = "retrieve", "When relevant (retrieved)"
        ALWAYS = "always", "Include always"
        TAGS = "tags", "Include for tags"

    completion = models.ForeignKey(Completion, on_delete=models.CASCADE, related_name="assignments")
    agent = models.ForeignKey("agents.Agent", on_delete=models.CASCADE, related_name="assignments")
    rule = models.CharField(max_length=20, choices=Rule.choices, default=Rule.RETRIEVE)
    # For the "tags" rule: included when the conversation carries one of these tags.
    tags = models.JSONField(default=list, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["completion", "agent"], name="assignment_unique_pair")
        ]
        # An agent's material (the dashboard, its counts and the export) starts from the agent.
        indexes = [models.Index(fields=["agent", "completion"], name="assignment_agent_idx")]

    def __str__(self) -> str:
        return f"{self.completion_id} → {self.agent_id}"


class PromptTemplate(models.Model):
    """A workspace's named prompt template (`services.templates`); its texts are versions.

    The current version is the highest number; a job records the version it used. A template
    may be the workspace's default (`is_default`) or the default of one agent's jobs (`agent`);
    an archived template is kept for the jobs that used it but offered to no new one.
    """

    workspace = models.ForeignKey("workspaces.Workspace", on_delete=models.CASCADE, related_name="prompt_templates")
    owner = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="prompt_templates")
    name = models.CharField(max_length=100)
    agent = models.ForeignKey(
        "agents.Agent", null=True, blank=True, on_delete=models.SET_NULL, related_name="prompt_templates"
    )
    is_default = models.BooleanField(default=False)
    archived = models.BooleanField(default=False)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["workspace_id", "name", "id"]
        verbose_name = "prompt template"
        constraints = [
            models.UniqueConstraint(
                fields=["workspace", "name"], condition=Q(archived=False), name="prompttemplate_unique_name"
            ),
            models.UniqueConstraint(
                fields=["workspace"], condition=Q(is_default=True, archived=False), name="prompttemplate_one_default"
            ),
            models.UniqueConstraint(
                fields=["agent"], condition=Q(agent__isnull=False, archived=False), name="prompttemplate_one_per_agent"
            ),
        ]

    def __str__(self) -> str:
        return self.name


class PromptTemplateVersion(models.Model):
    """One saved text of a template: never changed, so a job's prompt can always be told."""

    template = models.ForeignKey(PromptTemplate, on_delete=models.CASCADE, related_name="versions")
    number = models.PositiveIntegerField()
    system = models.TextField(blank=True)
    user = models.TextField()
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["template_id", "-number"]
        verbose_name = "prompt template version"
        constraints = [
            models.UniqueConstraint(fields=["template", "number"], name="prompttemplateversion_unique_number")
        ]

    def __str__(self) -> str:
        return f"{self.template.name} v{self.number}"
