"""Remote control: drive a FakeLLMServer in another process through its ``/_fake`` endpoints."""

from __future__ import annotations

import json
import urllib.parse
import urllib.request
from collections.abc import Mapping, Sequence
from typing import Any


class FakeLLMClient:
    """Drive a FakeLLMServer in another process through its /_fake endpoints."""

    def __init__(self, base_url: str, *, timeout: float = 10.0) -> None:
        root = base_url.rstrip("/")
        self.root = root.removesuffix("/v1")
        self.timeout = timeout

    def _request(self, method: str, path: str, body: Any = None) -> Any:
        data = None if body is None else json.dumps(body).encode("utf-8")
        request = urllib.request.Request(
            self.root + path,
            data=data,
            method=method,
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=self.timeout) as response:
            return json.loads(response.read() or b"null")

    def script(
        self, behaviours: Sequence[Mapping[str, Any]], *, append: bool = False
    ) -> None:
        self._request(
            "POST", "/_fake/script", {"behaviours": list(behaviours), "append": append}
        )

    def set_default(
        self, behaviour: Mapping[str, Any] | Sequence[Mapping[str, Any]] | None
    ) -> None:
        self._request("POST", "/_fake/default", {"default": behaviour})

    def configure(self, **settings: Any) -> None:
        self._request("POST", "/_fake/settings", settings)

    def reset(self) -> None:
        self._request("POST", "/_fake/reset", {})

    def calls(self, *, since: int = 0, brief: bool = False) -> list[dict[str, Any]]:
        query = urllib.parse.urlencode({"since": since, "brief": int(brief)})
        return list(self._request("GET", f"/_fake/calls?{query}"))

    def state(self) -> dict[str, Any]:
        return dict(self._request("GET", "/_fake/state"))
