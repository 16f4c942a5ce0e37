from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
from django.contrib.auth import get_user_model
from django.contrib.auth.models import AbstractBaseUser
from django.core.management import call_command
from django.core.management.base import CommandError

from conversations.models import Conversation

from .conftest import SAMPLES

pytestmark = pytest.mark.django_db


def run(*args: str) -> str:
    out = io.StringIO()
    call_command("import_conversations", *args, stdout=out)
    return out.getvalue()


def test_it_prints_a_report_of_what_it_imported(alice: AbstractBaseUser) -> None:
    output = run(str(SAMPLES / "openai-messages.jsonl"), "--user", "alice")

    assert "Imported 2 conversation(s) from openai-messages.jsonl (format: openai)" in output
    assert "'Warranty on a cracked frame': 7 messages" in output
    assert "'Tubeless setup': 4 messages" in output
    assert "Skipped parts (images, files, non-text content): 0" in output
    assert Conversation.objects.filter(owner=alice).count() == 2


def test_it_prints_json_and_defaults_to_the_demo_user() -> None:
    output = run(str(SAMPLES / "chatgpt-export.json"), "--json")

    report = json.loads(output)
    assert report["format"] == "chatgpt"
    assert [(i["title"], i["message_count"]) for i in report["imported"]] == [("Derailleur adjustment", 4)]
    demo = get_user_model().objects.get(username="demo")
    assert not demo.has_usable_password()
    assert Conversation.objects.get().owner == demo


def test_it_takes_the_user_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MASSCER_CLI_USER", "charlie")

    run(str(SAMPLES / "sharegpt.json"), "--format", "sharegpt")

    assert Conversation.objects.filter(owner__username="charlie").count() == 2


def test_it_lists_problems_and_fails_when_nothing_was_imported(tmp_path: Path) -> None:
    path = tmp_path / "lonely.jsonl"
    path.write_text('{"messages": [{"role": "assistant", "content": "Anyone?"}]}\n{"messages": [\n')
    out = io.StringIO()

    with pytest.raises(CommandError, match="Nothing was imported") as caught:
        call_command("import_conversations", str(path), stdout=out)

    assert caught.value.returncode != 0
    assert "line 1: no user turn" in out.getvalue()
    assert "line 2: invalid JSON" in out.getvalue()


def test_it_refuses_an_unreadable_file(tmp_path: Path) -> None:
    path = tmp_path / "cut.json"
    path.write_bytes((SAMPLES / "sharegpt.json").read_bytes()[:300])

    with pytest.raises(CommandError, match="invalid JSON at line"):
        run(str(path))
    with pytest.raises(CommandError, match="No such file"):
        run(str(tmp_path / "missing.json"))
    assert not Conversation.objects.exists()


def test_it_refuses_an_oversized_file_before_reading_it(tmp_path: Path, settings: object) -> None:
    settings.MASSCER_MAX_UPLOAD_BYTES = 500  # type: ignore[attr-defined]

    with pytest.raises(CommandError, match="the limit is 500 bytes"):
        run(str(SAMPLES / "chatgpt-export.json"))
