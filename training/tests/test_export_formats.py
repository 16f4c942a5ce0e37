"""Dataset formats: OpenAI JSONL passes the format check, Alpaca/ShareGPT/CSV shapes, the split."""
from __future__ import annotations

import csv
import io
import json
from types import GeneratorType
from typing import Any

import pytest
from django.core.management import call_command

from conversations.importers import parse
from training.export import (
    CSV_COLUMNS,
    ExportReport,
    export_lines,
    export_report,
    export_stream,
    openai_problems,
    split_plan,
)
from training.models import Completion

from .factories import make_agent, make_chunk, make_completions, make_conversation, make_document, make_job, numbered

pytestmark = pytest.mark.django_db


@pytest.fixture
def dataset(alice) -> dict[str, Any]:
    """Alice's agent with approved material from 6 documents and 4 conversations, plus pending rows."""
    agent = make_agent(alice)
    job = make_job(alice)
    sources = [make_document(alice, title=f"Doc {n}") for n in range(6)]
    sources += [make_conversation(alice, title=f"Chat {n}") for n in range(4)]
    offset = 0
    for number, source in enumerate(sources):
        chunk = make_chunk(source, index=0)
        make_completions(job, chunk, numbered(3 + number, start=offset), agents=[agent], status="approved")
        offset += 3 + number
    make_completions(job, chunk, numbered(2, start=500), agents=[agent], status="pending")
    return {"agent": agent, "job": job, "sources": sources, "approved": offset, "chunk": chunk}


def text_of(agent: Any, fmt: str, **options: Any) -> str:
    return "".join(export_lines(agent=agent, fmt=fmt, **options))


# --- OpenAI's format check --------------------------------------------------------------


def test_every_openai_line_passes_the_format_check(dataset) -> None:
    lines = text_of(dataset["agent"], "openai-jsonl").splitlines()
    assert len(lines) == dataset["approved"]
    for line in lines:
        example = json.loads(line)
        assert openai_problems(example) == []
        assert [m["role"] for m in example["messages"]] == ["system", "user", "assistant"]


@pytest.mark.parametrize(
    ("messages", "problem"),
    [
        ([{"role": "user", "content": "Hi?"}], "example_missing_assistant_message"),
        ([{"role": "assistant", "content": "Hi."}, {"role": "user", "content": "Hi?"}], "role_order"),
        ([{"role": "user", "content": "Hi?"}, {"role": "system", "content": "S"},
          {"role": "assistant", "content": "Hi."}], "role_order"),
        ([{"role": "user", "content": "  "}, {"role": "assistant", "content": "Hi."}], "missing_content"),
        ([{"role": "user", "content": "Hi?"}, {"role": "robot", "content": "Hi."}], "unrecognized_role"),
        ([{"role": "user"}, {"role": "assistant", "content": "Hi."}], "message_missing_key"),
        ([], "missing_messages_list"),
    ],
)
def test_the_format_check_catches_what_openai_refuses(messages, problem) -> None:
    assert problem in openai_problems({"messages": messages})


def test_the_format_check_accepts_multi_turn_examples() -> None:
    example = {"messages": [
        {"role": "system", "content": "S"}, {"role": "user", "content": "A?"}, {"role": "assistant", "content": "A."},
        {"role": "user", "content": "B?"}, {"role": "assistant", "content": "B."},
    ]}
    assert openai_problems(example) == []


def test_examples_over_the_token_limit_are_skipped_and_reported(dataset) -> None:
    huge = make_completions(
        dataset["job"], dataset["chunk"], [("Tell me everything?", "word " * 3000)], agents=[dataset["agent"]],
        status="approved",
    )[0]
    blank = make_completions(
        dataset["job"], dataset["chunk"], [("   ", "An answer.")], agents=[dataset["agent"]], status="approved"
    )[0]
    report = ExportReport()
    lines = text_of(dataset["agent"], "openai-jsonl", max_tokens=2000, report=report).splitlines()
    assert len(lines) == dataset["approved"]
    assert report.skipped == {"too_many_tokens": 1, "missing_content": 1}
    assert report.skipped_total == 2
    assert {pk for pk, _ in report.skipped_examples} == {huge.pk, blank.pk}
    assert report.written["train"] == dataset["approved"]


def test_the_command_reports_skipped_examples_on_stderr(alice, dataset, tmp_path, capsys, monkeypatch) -> None:
    monkeypatch.setenv("MASSCER_CLI_USER", "alice")
    make_completions(
        dataset["job"], dataset["chunk"], [("Tell me everything?", "word " * 3000)], agents=[dataset["agent"]],
        status="approved",
    )
    target = tmp_path / "support.jsonl"
    call_command("export", "--agent", "support", "--output", str(target), "--max-tokens", "2000")
    err = capsys.readouterr().err
    assert f"Wrote {dataset['approved']} examples" in err
    assert "skipped 1: the example is over the token limit (1×)" in err
    assert len(target.read_text().splitlines()) == dataset["approved"]


def test_an_agent_without_a_system_prompt_exports_user_and_assistant_only(dataset) -> None:
    dataset["agent"].system_prompt = ""
    first = json.loads(text_of(dataset["agent"], "openai-jsonl").splitlines()[0])
    assert [m["role"] for m in first["messages"]] == ["user", "assistant"]
    assert openai_problems(first) == []


# --- the other formats ---------------------------------------------------------------------


def test_alpaca_is_a_json_array_of_instruction_input_output(dataset) -> None:
    rows = json.loads(text_of(dataset["agent"], "alpaca"))
    assert len(rows) == dataset["approved"]
    assert set(rows[0]) == {"instruction", "input", "output", "system"}
    first = Completion.objects.filter(status="approved").order_by("pk").first()
    assert rows[0]["instruction"] == first.question and rows[0]["output"] == first.answer
    assert rows[0]["input"] == "" and rows[0]["system"] == "You help customers."


def test_sharegpt_is_a_json_array_our_own_importer_reads(dataset) -> None:
    text = text_of(dataset["agent"], "sharegpt")
    rows = json.loads(text)
    assert len(rows) == dataset["approved"]
    assert [turn["from"] for turn in rows[0]["conversations"]] == ["human", "gpt"]
    parsed = parse(text.encode(), "export.json", "sharegpt")
    assert len(parsed.conversations) == dataset["approved"] and not parsed.problems
    assert [m.role for m in parsed.conversations[0].messages] == ["system", "user", "assistant"]


def test_empty_exports_are_still_valid_json(alice) -> None:
    agent = make_agent(alice, slug="empty")
    assert json.loads(text_of(agent, "alpaca")) == []
    assert json.loads(text_of(agent, "sharegpt")) == []
    assert text_of(agent, "openai-jsonl") == ""


def test_csv_has_a_header_and_one_row_per_completion(dataset) -> None:
    rows = list(csv.DictReader(io.StringIO(text_of(dataset["agent"], "csv"))))
    assert len(rows) == dataset["approved"]
    assert list(rows[0]) == CSV_COLUMNS
    assert {row["source_type"] for row in rows} == {"document", "conversation"}
    assert rows[0]["source_title"] == "Doc 0" and rows[0]["status"] == "approved"


def test_csv_cells_cannot_run_as_spreadsheet_formulas(alice) -> None:
    agent = make_agent(alice, slug="formula")
    make_completions(make_job(alice), make_chunk(make_document(alice)), [("=HYPERLINK(\"x\")?", "@SUM(A1)")],
                     agents=[agent], status="approved")
    row = next(csv.DictReader(io.StringIO(text_of(agent, "csv"))))
    assert row["question"] == "'=HYPERLINK(\"x\")?" and row["answer"] == "'@SUM(A1)"


def test_json_arrays_are_streamed_element_by_element(dataset) -> None:
    lines = export_lines(agent=dataset["agent"], fmt="alpaca")
    assert isinstance(lines, GeneratorType)
    pieces = list(lines)
    assert len(pieces) == dataset["approved"] + 2  # "[", one piece per element, "]"
    assert pieces[0] == "[" and pieces[-1] == "\n]\n"


def test_status_all_includes_pending(dataset) -> None:
    assert len(text_of(dataset["agent"], "openai-jsonl", status="all").splitlines()) == dataset["approved"] + 2


# --- the split ------------------------------------------------------------------------------


def sources_by_part(agent: Any, **options: Any) -> dict[str, set[tuple[str, int]]]:
    out: dict[str, set[tuple[str, int]]] = {}
    for part in ("train", "validation"):
        records = [json.loads(line) for line in export_lines(agent=agent, fmt="records", part=part, **options)]
        out[part] = {(r["source_type"], r["source_id"]) for r in records}
    return out


def test_the_split_leaks_no_source_across_sides(dataset) -> None:
    for seed in range(8):
        parts = sources_by_part(dataset["agent"], split=0.25, seed=seed)
        assert parts["train"] and parts["validation"]
        assert not parts["train"] & parts["validation"]
        assert len(parts["train"] | parts["validation"]) == len(dataset["sources"])


def test_the_split_is_reproducible_with_its_seed(dataset) -> None:
    plan = split_plan(agent=dataset["agent"], status="approved", fraction=0.2, seed=42)
    assert plan == split_plan(agent=dataset["agent"], status="approved", fraction=0.2, seed=42)
    plans = {split_plan(agent=dataset["agent"], status="approved", fraction=0.2, seed=s).validation for s in range(10)}
    assert len(plans) > 1


def test_the_split_takes_about_the_asked_fraction(dataset) -> None:
    report = export_report(agent=dataset["agent"], split=0.3, seed=1)
    share = report.written["validation"] / dataset["approved"]
    assert 0.3 <= share < 0.3 + 12 / dataset["approved"]  # whole sources: at most one source over
    assert report.sources["train"] + report.sources["validation"] == len(dataset["sources"])


def test_one_source_cannot_be_split(alice) -> None:
    agent = make_agent(alice, slug="single")
    make_completions(make_job(alice), make_chunk(make_document(alice)), numbered(10), agents=[agent],
                     status="approved")
    report = ExportReport()
    pieces = list(export_stream(agent=agent, fmt="openai-jsonl", split=0.5, seed=3, report=report))
    assert report.written == {"train": 10, "validation": 0}
    assert all(part == "train" for part, text in pieces if text)


def test_the_command_writes_two_files_with_split_and_seed(alice, dataset, tmp_path, capsys, monkeypatch) -> None:
    monkeypatch.setenv("MASSCER_CLI_USER", "alice")
    target = tmp_path / "support.jsonl"
    call_command("export", "--agent", "support", "--output", str(target), "--split", "0.2", "--seed", "42")
    train = (tmp_path / "support.train.jsonl").read_text().splitlines()
    validation = (tmp_path / "support.validation.jsonl").read_text().splitlines()
    assert train and validation and len(train) + len(validation) == dataset["approved"]
    questions = [json.loads(line)["messages"][1]["content"] for line in train + validation]
    assert len(set(questions)) == dataset["approved"]
    err = capsys.readouterr().err
    assert f"Wrote {len(train)} examples to {tmp_path / 'support.train.jsonl'}" in err
    # the same seed gives the same files
    call_command("export", "--agent", "support", "--output", str(target), "--split", "0.2", "--seed", "42")
    assert (tmp_path / "support.train.jsonl").read_text().splitlines() == train


@pytest.mark.parametrize("fmt", ["alpaca", "sharegpt", "csv", "records"])
def test_the_command_writes_every_format(alice, dataset, tmp_path, monkeypatch, fmt) -> None:
    monkeypatch.setenv("MASSCER_CLI_USER", "alice")
    target = tmp_path / f"out.{fmt}"
    call_command("export", "--agent", "support", "--format", fmt, "--output", str(target))
    text = target.read_text()
    if fmt in ("alpaca", "sharegpt"):
        assert len(json.loads(text)) == dataset["approved"]
    elif fmt == "csv":
        assert len(list(csv.DictReader(io.StringIO(text)))) == dataset["approved"]
    else:
        assert len(text.splitlines()) == dataset["approved"]


def test_split_without_output_is_refused(alice, dataset, monkeypatch) -> None:
    from django.core.management.base import CommandError

    monkeypatch.setenv("MASSCER_CLI_USER", "alice")
    with pytest.raises(CommandError, match="--output"):
        call_command("export", "--agent", "support", "--split", "0.2")
