"""Prompt templates in the browser (#15.3): alice writes one, previews it on a chunk of her manual
and saves it. (A refused template answers 400 with the reasons: test_prompt_templates.py.)"""
from __future__ import annotations

from typing import Any

import pytest

from documents.models import Page
from masscer.tests.web import eager_celery, fast_passwords  # noqa: F401 - fixtures
from training.models import PromptTemplate
from training.tests.factories import make_document

from .test_flows import app, browser, log_in, page, shot  # noqa: F401 - fixtures

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]

MARKER = "Write for night-shift technicians."
USER = f"{MARKER}\n\n{{rules}}\n\n{{source}}\n\nNumber of pairs: {{count}}"


def test_alice_writes_previews_and_saves_a_template(page: Any, app: str, alice: Any) -> None:  # noqa: F811
    document = make_document(alice)
    Page.objects.create(document=document, number=1, text="The reset button is under the lid. " * 20)
    log_in(page, app, "/jobs/templates/new/")
    assert "{rules}" in page.input_value("#id_user")  # it starts as the built-in prompt
    page.fill("#id_name", "Technicians")
    page.fill("#id_user", USER)
    page.select_option("#id_source", f"document:{document.pk}")
    page.click("button[value=preview]")
    preview = page.inner_text("#template-preview")
    assert "Preview: chunk 0 of Manual" in preview and MARKER in preview and "<source>" in preview
    shot(page, "60-template-preview")
    assert not PromptTemplate.objects.exists()
    page.click("button[value=save]")
    page.wait_for_selector("text=Version 1")
    assert PromptTemplate.objects.get().name == "Technicians"
