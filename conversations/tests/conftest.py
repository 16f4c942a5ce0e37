"""Helpers for the conversations tests (alice, bob and charlie come from the root conftest)."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from django.conf import settings

# The shared samples live next to the project, never copied into it (see samples/README.md).
SAMPLES = Path(settings.BASE_DIR).parent / "shared" / "samples" / "conversations"


def sample(name: str) -> bytes:
    return (SAMPLES / name).read_bytes()


def as_json(value: Any) -> bytes:
    return json.dumps(value).encode()
