"""Uploads become documents with pages, or failed documents with a reason; rejected uploads leave nothing."""
from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import pytest
from django.core.exceptions import ValidationError

from documents.models import Document
from documents.services import document_create, document_create_from_path, document_extract

pytestmark = pytest.mark.django_db
PDFS = Path(__file__).resolve().parents[2].parent / "shared" / "samples" / "pdf"


@pytest.fixture(autouse=True)
def media(settings: Any, tmp_path: Path) -> Path:
    settings.MEDIA_ROOT = tmp_path / "uploads"
    return settings.MEDIA_ROOT


def stored_files(media: Path) -> list[Path]:
    return [p for p in media.rglob("*") if p.is_file()] if media.exists() else []


def test_a_pdf_becomes_a_ready_document_with_its_pages(alice) -> None:
    document = document_create_from_path(owner=alice, path=PDFS / "pdflatex-4-pages.pdf")
    document = document_extract(document_id=document.pk)
    assert document.status == Document.Status.READY
    assert document.page_count == 4 and document.kind == "pdf"
    assert [p.number for p in document.pages.all()] == [1, 2, 3, 4]
    assert document.token_count > 500


def test_the_stored_file_has_a_random_name_not_the_users(alice) -> None:
    document = document_create(owner=alice, fileobj=io.BytesIO(b"# Notes\n\nHello."), filename="../../evil name.md")
    assert "evil" not in document.file.name and ".." not in document.file.name
    assert document.filename == "evil name.md"


@pytest.mark.parametrize(
    ("sample", "message"),
    [("libreoffice-writer-password.pdf", "password protected"), ("imagemagick-images.pdf", "No extractable text")],
)
def test_unreadable_pdfs_fail_with_a_clear_message(alice, sample: str, message: str) -> None:
    document = document_create_from_path(owner=alice, path=PDFS / sample)
    document = document_extract(document_id=document.pk)
    assert document.status == Document.Status.FAILED
    assert message.lower() in document.error.lower()
    assert not document.pages.exists()


def test_an_oversized_upload_is_refused_and_leaves_no_row_and_no_file(alice, settings, media) -> None:
    settings.MASSCER_MAX_UPLOAD_BYTES = 1000
    with pytest.raises(ValidationError, match="the limit is"):
        document_create(owner=alice, fileobj=io.BytesIO(b"x" * 2000), filename="big.txt")
    assert not Document.objects.exists()
    assert stored_files(media) == []


def test_an_empty_upload_is_refused(alice, media) -> None:
    with pytest.raises(ValidationError, match="empty"):
        document_create(owner=alice, fileobj=io.BytesIO(b""), filename="empty.txt")
    assert stored_files(media) == []


def test_a_document_over_the_token_limit_fails_with_the_numbers(alice, settings) -> None:
    settings.MASSCER_MAX_DOCUMENT_TOKENS = 50
    document = document_create(owner=alice, fileobj=io.BytesIO(("word " * 500).encode()), filename="long.txt")
    document = document_extract(document_id=document.pk)
    assert document.status == Document.Status.FAILED
    assert "the limit is 50" in document.error


def test_extracting_twice_is_a_no_op(alice) -> None:
    document = document_create(owner=alice, fileobj=io.BytesIO(b"Some text here."), filename="a.txt")
    document_extract(document_id=document.pk)
    again = document_extract(document_id=document.pk)
    assert again.status == Document.Status.READY and again.pages.count() == 1
