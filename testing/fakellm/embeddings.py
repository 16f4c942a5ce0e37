"""Embeddings: deterministic hashed bag-of-words vectors for ``/embeddings``."""

from __future__ import annotations

import hashlib
import math

from .pairs import _TOKEN


def embed(text: str, dimensions: int = 64) -> list[float]:
    """Deterministic hashed bag-of-words vector, L2-normalised."""
    vector = [0.0] * dimensions
    for token in _TOKEN.findall(text.lower()):
        digest = hashlib.sha256(token.encode("utf-8")).digest()
        index = int.from_bytes(digest[:4], "big") % dimensions
        vector[index] += 1.0 if digest[4] % 2 == 0 else -1.0
    norm = math.sqrt(sum(v * v for v in vector))
    return [v / norm for v in vector] if norm else vector
