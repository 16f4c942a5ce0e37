"""Export file names and media types: the page, the API and the command line say what the file is."""
from __future__ import annotations

import csv
import io
import json
from typing import Any

import pytest
from django.core.management import call_command

from training.export import FORMATS, export_file

from .factories import make_agent, make_chunk, make_completions, make_document, make_job, numbered

pytestmark = pytest.mark.django_db

# What a reader of each kind of file does with it: every one must accept the download.
READERS = {
    "application/jsonl": lambda text: [json.loads(line) for line in text.splitlines()],
    "application/json": json.loads,
    "text/csv": lambda text: list(csv.reader(io.StringIO(text)))[1:],
}


@pytest.fixture
def support(alice) -> Any:
    """alice's agent with 4 approved completions from two documents."""
    agent = make_agent(alice)
    job = make_job(alice)
    for n, title in enumerate(("Manual", "Policy")):
        chunk = make_chunk(make_document(alice, title=title))
        make_completions(job, chunk, numbered(2, start=2 * n), agents=[agent], status="approved")
    return agent


def download(response: Any) -> tuple[str, str, str]:
    disposition = response["Content-Disposition"]
    name = disposition.split('filename="', 1)[1].rstrip('"')
    return name, response["Content-Type"].split(";")[0], b"".join(response.streaming_content).decode()


@pytest.mark.parametrize("fmt", FORMATS)
def test_the_web_download_is_named_and_typed_for_what_it_holds(client, alice, support, fmt) -> None:
    client.force_login(alice)
    name, media_type, body = download(client.get(f"/agents/{support.pk}/export/?format={fmt}"))
    assert name == export_file(fmt=fmt, stem=f"support-{fmt}-approved").name
    assert len(READERS[media_type](body)) == 4
    if fmt in ("alpaca", "sharegpt"):
        assert name.endswith(".json") and media_type == "application/json"


@pytest.mark.parametrize("fmt", FORMATS)
def test_the_api_and_the_page_agree_on_the_file(client, alice, support, fmt) -> None:
    client.force_login(alice)
    page_name, page_type, _ = download(client.get(f"/agents/{support.pk}/export/?format={fmt}"))
    api_name, api_type, body = download(client.get(f"/api/agents/{support.pk}/export?format={fmt}"))
    assert api_type == page_type
    assert api_name.rsplit(".", 1)[1] == page_name.rsplit(".", 1)[1]
    assert len(READERS[api_type](body)) == 4


def test_the_api_names_each_side_of_a_split(client, alice, support) -> None:
    client.force_login(alice)
    url = f"/api/agents/{support.pk}/export?format=sharegpt&split=0.5&seed=1&part=validation"
    name, media_type, body = download(client.get(url))
    assert (name, media_type) == ("support.validation.json", "application/json")
    assert len(json.loads(body)) == 2


def test_the_command_names_split_files_by_the_format_when_the_output_has_no_extension(
    alice, support, tmp_path, monkeypatch
) -> None:
    monkeypatch.setenv("MASSCER_CLI_USER", "alice")
    call_command("export", "--agent", "support", "--format", "alpaca", "--split", "0.5", "--output",
                 str(tmp_path / "data"))  # fmt: skip
    assert sorted(path.name for path in tmp_path.iterdir()) == ["data.train.json", "data.validation.json"]
    rows = [json.loads((tmp_path / name).read_text()) for name in ("data.train.json", "data.validation.json")]
    assert sum(len(part) for part in rows) == 4


def test_the_command_says_when_the_chosen_name_is_another_kind_of_file(
    alice, support, tmp_path, monkeypatch, capsys
) -> None:
    monkeypatch.setenv("MASSCER_CLI_USER", "alice")
    call_command("export", "--agent", "support", "--format", "alpaca", "--output", str(tmp_path / "data.jsonl"))
    assert "alpaca is written as application/json (.json), not .jsonl" in capsys.readouterr().err
    assert len(json.loads((tmp_path / "data.jsonl").read_text())) == 4
    call_command("export", "--agent", "support", "--format", "records", "--output", str(tmp_path / "rows.jsonl"))
    assert "Note:" not in capsys.readouterr().err


def test_an_unknown_format_has_no_file_name() -> None:
    with pytest.raises(ValueError, match="Unknown format 'xml'"):
        export_file(fmt="xml", stem="support")
