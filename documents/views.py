"""Document pages: the list with uploads, a document's pages, download and delete.

Chunks and training live in the training app (this app imports neither training nor agents);
the templates link to them by URL name.
"""
from __future__ import annotations

from dataclasses import dataclass

from django.conf import settings
from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.exceptions import ValidationError
from django.core.paginator import Page
from django.db.models import ProtectedError
from django.http import FileResponse, Http404, HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.views.decorators.http import require_GET, require_http_methods, require_POST

from masscer.views import get_visible_or_404, paginate, posted

from .forms import ACCEPT, UploadForm
from .models import Document
from .selectors import document_pages, documents_for
from .services import document_create, document_delete

PAGES_PER_PAGE = 10
IN_PROGRESS = (Document.Status.UPLOADED, Document.Status.EXTRACTING)


@dataclass(frozen=True)
class UploadResult:
    filename: str
    document: Document | None = None
    error: str = ""


def _list_rows(request: HttpRequest) -> Page:
    rows = documents_for(user=request.user).select_related("owner", "workspace")
    return paginate(request, rows)


def _store_uploads(request: HttpRequest, form: UploadForm) -> list[UploadResult]:
    results = []
    for upload in request.FILES.getlist("files"):
        try:
            document = document_create(
                owner=request.user, fileobj=upload, filename=upload.name, workspace=form.chosen_workspace()
            )
        except ValidationError as exc:
            results.append(UploadResult(upload.name, error=" ".join(exc.messages)))
        else:
            results.append(UploadResult(upload.name, document=document))
    return results


@login_required
@require_http_methods(["GET", "POST"])
def document_list(request: HttpRequest) -> HttpResponse:
    results: list[UploadResult] = []
    form = UploadForm(posted(request), user=request.user)
    if request.method == "POST" and form.is_valid():
        results = _store_uploads(request, form)
        stored = [r for r in results if r.document]
        if not results:
            form.add_error(None, "Choose one or more files to upload.")
        elif len(stored) == len(results):
            names = ", ".join(r.filename for r in stored)
            messages.success(request, f"Uploaded {names}. Reading the text now; the status updates below.")
            return redirect("documents:list")
    page = _list_rows(request)
    context = {
        "page": page,
        "form": form,
        "accept": ACCEPT,
        "max_upload_mb": settings.MASSCER_MAX_UPLOAD_BYTES // (1024 * 1024),
        "results": results,
        "polling": any(d.status in IN_PROGRESS for d in page),
    }
    if request.htmx and request.GET.get("partial") == "table":
        return render(request, "documents/_table.html", context)
    status = 400 if results and not any(r.document for r in results) else 200
    return render(request, "documents/list.html", context, status=status)


@login_required
@require_GET
def document_detail(request: HttpRequest, pk: int) -> HttpResponse:
    document = get_visible_or_404(Document.objects.select_related("owner", "workspace"), user=request.user, pk=pk)
    pages = paginate(request, document_pages(document=document), per_page=PAGES_PER_PAGE)
    context = {"document": document, "pages": pages, "tab": "pages", "in_progress": document.status in IN_PROGRESS}
    return render(request, "documents/detail.html", context)


@login_required
@require_GET
def document_download(request: HttpRequest, pk: int) -> FileResponse:
    document = get_visible_or_404(Document.objects.all(), user=request.user, pk=pk)
    try:
        handle = document.file.open("rb")
    except FileNotFoundError:
        raise Http404("The file is missing from storage.") from None
    return FileResponse(handle, as_attachment=True, filename=document.filename)


@login_required
@require_POST
def document_remove(request: HttpRequest, pk: int) -> HttpResponse:
    document = get_visible_or_404(Document.objects.all(), user=request.user, pk=pk)
    title = document.title
    try:
        document_delete(actor=request.user, document=document)
    except ProtectedError:
        messages.error(
            request, f"“{title}” has completions made from it; they keep its text as evidence, so it stays."
        )
        return redirect("documents:detail", pk=pk)
    messages.success(request, f"Deleted “{title}”.")
    return redirect("documents:list")
