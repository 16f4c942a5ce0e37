"""Forms of the documents pages."""
from __future__ import annotations

from workspaces.forms import WorkspacePickerMixin

ACCEPT = ".pdf,.docx,.md,.markdown,.txt,.text,.html,.htm"


class UploadForm(WorkspacePickerMixin):
    """Where uploads go; the files themselves are read from request.FILES one by one,
    so each gets its own result (stored, or why not)."""
