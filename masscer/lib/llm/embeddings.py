"""Embeddings: one vector per text from the endpoint's ``/embeddings``, in order."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import openai

from .client import client_for
from .errors import SDK_PARSE_ERRORS, LLMPermanentError, map_error, not_openai
from .parsing import as_int
from .types import LLMConfig

# Inputs per /embeddings request (OpenAI accepts up to 2048).
_EMBED_BATCH = 256


def embed(config: LLMConfig, texts: Sequence[str], *, model: str) -> list[list[float]]:
    """One vector per text, in order, from the endpoint's ``/embeddings``."""
    # OpenAI rejects empty strings as input.
    items = [text if text.strip() else " " for text in texts]
    client = client_for(config)
    vectors: list[list[float]] = []
    for start in range(0, len(items), _EMBED_BATCH):
        batch = items[start : start + _EMBED_BATCH]
        try:
            response = client.embeddings.create(
                model=model, input=batch, encoding_format="float"
            )
        except openai.OpenAIError as exc:
            raise map_error(exc, config, model) from exc
        except SDK_PARSE_ERRORS as exc:
            raise not_openai(config) from exc
        vectors.extend(_embedding_vectors(response, len(batch), config))
    return vectors


def _embedding_vectors(response: Any, expected: int, config: LLMConfig) -> list[list[float]]:
    data = getattr(response, "data", None)
    if not isinstance(data, list):
        raise not_openai(config)
    if len(data) != expected:
        raise LLMPermanentError(
            f"Model server returned {len(data)} embeddings for {expected} inputs"
        )
    ordered = sorted(data, key=lambda item: as_int(getattr(item, "index", 0)))
    vectors = []
    for item in ordered:
        values = getattr(item, "embedding", None)
        if not isinstance(values, list) or not values:
            raise LLMPermanentError(
                f"Model server at {config.base_url} returned an embedding that is not a list of numbers"
            )
        vectors.append([float(v) for v in values])
    return vectors
