"""Fixtures shared by the model-door tests: a fake server and configs pointing at it."""
from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest

from masscer.lib.llm import LLMConfig
from testing.fakellm import FakeLLMServer

API_KEY = "sk-test-SECRET-0123456789"
ConfigFactory = Callable[..., LLMConfig]


@pytest.fixture
def server() -> Iterator[FakeLLMServer]:
    with FakeLLMServer() as fake:
        yield fake


@pytest.fixture
def make_config(server: FakeLLMServer) -> ConfigFactory:
    def factory(**overrides: Any) -> LLMConfig:
        values: dict[str, Any] = {
            "base_url": server.base_url,
            "api_key": API_KEY,
            "model": "fake-model",
            "timeout": 5.0,
        }
        values.update(overrides)
        return LLMConfig(**values)

    return factory
