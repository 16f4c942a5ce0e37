"""Forms of the training pages: the Train dialog, review edits and filters."""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

from django import forms
from django.conf import settings
from django.db.models import QuerySet

from .models import Completion, TrainingJob
from .question_types import AUDIENCE_MAX_CHARS, DEFAULT_TYPE, DIFFICULTIES, MAX_SHARE, QUESTION_TYPES
from .services.jobs import MAX_SEED_EXAMPLES

if TYPE_CHECKING:
    from agents.models import Agent

MAX_STOPS = 4
# The Train dialog's share input of a question type is named this plus the type's key.
TYPE_PREFIX = "type_"


class TrainForm(forms.Form):
    """The Train dialog. Style and redaction are only offered for conversations."""

    count = forms.IntegerField(label="Number of completions")  # replaced in __init__ (limit from settings)
    agents = forms.ModelMultipleChoiceField(
        queryset=None,  # set per request: the agents of the sources' workspace
        required=False,
        widget=forms.CheckboxSelectMultiple,
        help_text="The completions become these agents' training material once approved.",
    )
    new_agent = forms.CharField(
        label="Or create an agent",
        max_length=200,
        required=False,
        help_text="Type a name to create a new agent here and attach the completions to it.",
        widget=forms.TextInput(attrs={"placeholder": "e.g. Support bot"}),
    )
    style = forms.ChoiceField(
        choices=TrainingJob.Style.choices,
        initial=TrainingJob.Style.SYNTHESIZE,
        widget=forms.RadioSelect,
        help_text="Synthesize writes new pairs about the text; mine rewrites the questions users really asked.",
    )
    redact = forms.BooleanField(
        label="Redact personal data",
        required=False,
        help_text="Mask e-mail addresses, phone and card numbers before the model sees the text.",
    )
    model = forms.CharField(
        max_length=200, help_text="The model that writes the pairs (any model the endpoint serves)."
    )
    temperature = forms.FloatField(
        min_value=0,
        max_value=2,
        required=False,
        help_text=(
            "Randomness, 0–2: lower gives focused, repeatable pairs; higher gives more varied ones. "
            "Empty: the server's default."
        ),
    )
    top_p = forms.FloatField(
        label="Top p",
        min_value=0,
        max_value=1,
        required=False,
        initial=1.0,
        help_text="Nucleus sampling, 0–1: only the likeliest words adding up to this share are used.",
    )
    max_tokens = forms.IntegerField(
        label="Max tokens",
        min_value=16,
        max_value=200_000,
        required=False,
        help_text="Longest reply per model call, in tokens. Empty: the model's own limit.",
        widget=forms.NumberInput(attrs={"placeholder": "model default"}),
    )
    frequency_penalty = forms.FloatField(
        min_value=-2,
        max_value=2,
        required=False,
        initial=0.0,
        help_text="−2 to 2: positive values discourage repeating the same words.",
    )
    stop = forms.CharField(
        label="Stop sequences",
        required=False,
        widget=forms.Textarea(attrs={"rows": 2, "placeholder": "one per line"}),
        help_text=f"The model stops writing when it produces one of these (one per line, at most {MAX_STOPS}).",
    )
    budget = forms.DecimalField(
        label="Budget (USD)",
        min_value=0,
        max_digits=12,
        decimal_places=6,
        required=False,
        help_text="Stop the job cleanly once its model calls have cost this much. Empty: no limit.",
        widget=forms.NumberInput(attrs={"placeholder": "no limit", "step": "0.01"}),
    )
    judge = forms.BooleanField(
        label="Judge each pair",
        required=False,
        help_text=(
            "A second model call scores each pair on faithfulness, answerability and usefulness; "
            "pairs below the threshold are replaced. About doubles the calls."
        ),
    )
    judge_threshold = forms.IntegerField(
        label="Lowest faithfulness kept",
        min_value=1,
        max_value=5,
        initial=4,
        required=False,
        help_text="1–5: pairs the judge scores below this are rejected and made again.",
    )
    audience = forms.CharField(
        required=False,
        max_length=AUDIENCE_MAX_CHARS,
        widget=forms.TextInput(attrs={"placeholder": "e.g. new customers of a bank"}),
        help_text="Who asks the questions: they are written the way this reader would ask them.",
    )
    difficulty = forms.ChoiceField(
        choices=list(DIFFICULTIES.items()),
        required=False,
        help_text="Easy: one plainly stated fact; hard: details, conditions, several statements combined.",
    )
    template = forms.ChoiceField(
        label="Prompt template",
        required=False,
        choices=[],  # set per request: the workspace's templates (`templates.template_choices`)
        help_text="The prompts the model is given; a template can be edited under Prompt templates.",
    )
    seed_examples = forms.IntegerField(
        label="Seed examples",
        min_value=0,
        max_value=MAX_SEED_EXAMPLES,
        initial=0,
        required=False,
        help_text=f"Show the model up to this many approved completions of the agents as examples of style "
        f"(0–{MAX_SEED_EXAMPLES}).",
    )
    instructions = forms.CharField(
        required=False,
        max_length=4000,
        widget=forms.Textarea(attrs={"rows": 3, "placeholder": "Audience: new customers. Language: English."}),
        help_text="Optional: audience, language, tone or topics to focus on.",
    )

    def __init__(
        self,
        *args: Any,
        agents: QuerySet[Agent],
        conversations: bool,
        template_choices: list[tuple[str, str]] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        template_field = self.fields["template"]
        assert isinstance(template_field, forms.ChoiceField)
        template_field.choices = template_choices or [("", "Built-in prompt")]
        for key, label in QUESTION_TYPES.items():  # one share per kind of question
            self.fields[TYPE_PREFIX + key] = forms.IntegerField(
                label=label, min_value=0, max_value=MAX_SHARE, required=False, initial=int(key == DEFAULT_TYPE)
            )
        limit = settings.MASSCER_MAX_COMPLETIONS_PER_JOB
        # The limit is a setting, read per form (the field keeps its place in the order).
        self.fields["count"] = forms.IntegerField(
            label="Number of completions",
            min_value=1,
            max_value=limit,
            initial=min(20, limit),
            help_text=f"Allowed: 1 to {limit:,}. They are spread over the text in proportion to its length.",
        )
        agent_field = self.fields["agents"]
        assert isinstance(agent_field, forms.ModelMultipleChoiceField)
        agent_field.queryset = agents
        self.fields["model"].initial = settings.MASSCER_LLM_MODEL
        # 0.2 for the embedded model: a small model quotes its evidence verbatim far more often.
        self.fields["temperature"].initial = settings.MASSCER_LLM_TEMPERATURE
        if not conversations:
            del self.fields["style"]
            del self.fields["redact"]
        self.fields["judge"].initial = settings.MASSCER_JUDGE_DEFAULT
        if settings.MASSCER_LLM_MODE != "chat":
            # The judge needs a chat model (services.jobs refuses it otherwise).
            del self.fields["judge"]
            del self.fields["judge_threshold"]
        if not settings.MASSCER_LLM_PRICES.strip():
            # Without prices nothing is costed, so a budget could never stop anything.
            del self.fields["budget"]

    def type_fields(self) -> list[forms.BoundField]:
        """The share inputs, one per kind of question, in `QUESTION_TYPES` order."""
        return [self[TYPE_PREFIX + key] for key in QUESTION_TYPES]

    def _shares(self) -> dict[str, int] | None:
        """The shares typed (an empty input is 0); None when none was given: factual only.
        All zero is left to `job_create`, which refuses it."""
        shares = {key: self.cleaned_data.get(TYPE_PREFIX + key) for key in QUESTION_TYPES}
        if all(share is None for share in shares.values()):
            return None
        return {key: share or 0 for key, share in shares.items()}

    def clean_stop(self) -> list[str]:
        stops = [line.strip("\r") for line in self.cleaned_data["stop"].splitlines() if line.strip()]
        if len(stops) > MAX_STOPS:
            raise forms.ValidationError(f"At most {MAX_STOPS} stop sequences.")
        return stops

    def clean(self) -> dict[str, Any]:
        data = super().clean() or {}
        if not data.get("agents") and not (data.get("new_agent") or "").strip() and "agents" not in self.errors:
            self.add_error("agents", "Choose at least one agent, or type a name to create one.")
        return data

    def job_params(self) -> dict[str, Any]:
        data = self.cleaned_data
        params = {
            key: data[key]
            for key in ("model", "temperature", "top_p", "max_tokens", "frequency_penalty", "stop", "instructions")
        }
        params["style"] = data.get("style") or TrainingJob.Style.SYNTHESIZE
        params["redact"] = bool(data.get("redact"))
        params["budget"] = data.get("budget")
        params["judge"] = bool(data.get("judge"))
        params["judge_threshold"] = data.get("judge_threshold") or 4
        params["question_types"] = self._shares()
        params["audience"] = data.get("audience") or ""
        params["difficulty"] = data.get("difficulty") or ""
        params["template"] = data.get("template") or ""
        params["seed_examples"] = data.get("seed_examples") or 0
        return params


class CompletionEditForm(forms.Form):
    question = forms.CharField(widget=forms.Textarea(attrs={"rows": 2}), max_length=10_000)
    answer = forms.CharField(widget=forms.Textarea(attrs={"rows": 4}), max_length=20_000)


REVIEW_ACTIONS = {"approve": Completion.Status.APPROVED, "reject": Completion.Status.REJECTED}
