"""The multi-turn export of conversations as a download (the conversations list links here)."""
from __future__ import annotations

from django.contrib.auth.decorators import login_required
from django.http import HttpRequest, HttpResponse, StreamingHttpResponse
from django.views.decorators.http import require_GET

from conversations.selectors import conversations_for
from masscer.views import id_or_none, int_list

from . import conversation_export, export


@login_required
@require_GET
def conversations_export(request: HttpRequest) -> HttpResponse:
    """`?format=openai-multiturn|sharegpt-multiturn&reviewed=reviewed|all[&tag=…][&workspace=…][&conversation=…]`."""
    fmt = request.GET.get("format", "openai-multiturn")
    reviewed = request.GET.get("reviewed", "reviewed")
    if fmt not in export.CONVERSATION_FORMATS or reviewed not in conversation_export.REVIEWED:
        return HttpResponse("Unknown export format or selection.", status=400, content_type="text/plain")
    rows = conversations_for(user=request.user)
    if workspace := id_or_none(request.GET.get("workspace")):
        rows = rows.filter(workspace_id=workspace)
    rows = conversation_export.conversations_selected(
        rows, reviewed=reviewed, ids=int_list(request.GET.getlist("conversation"))
    )
    download = export.export_file(fmt=fmt, stem=f"conversations-{fmt}-{reviewed}")
    lines = conversation_export.conversation_export_lines(
        conversations=rows, fmt=fmt, tag=request.GET.get("tag", "")[:50]
    )
    response = StreamingHttpResponse(lines, content_type=download.content_type)
    response["Content-Disposition"] = f'attachment; filename="{download.name}"'
    return response
