from __future__ import annotations

import itertools
import random
from collections.abc import Callable
from typing import Any

import pytest

from documents.models import Document, Page
from workspaces.services import workspace_personal

WORDS = [
    "river",
    "bridge",
    "engine",
    "harbour",
    "valve",
    "turbine",
    "ledger",
    "invoice",
    "customer",
    "refund",
    "warranty",
    "policy",
    "sensor",
    "voltage",
    "battery",
    "charger",
    "antenna",
    "signal",
    "router",
    "firmware",
    "update",
    "backup",
    "archive",
    "meadow",
    "forest",
    "glacier",
    "volcano",
    "canyon",
    "desert",
    "island",
    "lagoon",
    "summit",
    "valley",
    "plateau",
    "delta",
    "protein",
    "enzyme",
    "membrane",
    "neuron",
    "synapse",
    "hormone",
    "vitamin",
    "mineral",
    "calcium",
    "sodium",
    "glucose",
    "treaty",
    "senate",
    "council",
    "tariff",
    "harvest",
    "vineyard",
    "orchard",
    "granary",
    "windmill",
    "foundry",
    "quarry",
]


def prose(seed: int, sentences: int) -> str:
    """Deterministic prose with enough distinct words for many distinct questions."""
    rng = random.Random(seed)
    out = []
    for _ in range(sentences):
        words = [rng.choice(WORDS) for _ in range(rng.randint(8, 16))]
        out.append(" ".join(words).capitalize() + ".")
    return " ".join(out)


@pytest.fixture
def ready_document() -> Callable[..., Document]:
    """A document already extracted into pages (extraction has its own tests).

    The text depends only on the document's place among those this test made, not on its
    primary key: PostgreSQL does not reuse keys after a test, so text seeded by the key
    changed with the tests that ran before (and a test could see different near duplicates).
    """
    made = itertools.count(1)

    def make(owner: Any, pages: int = 3, sentences_per_page: int = 25, title: str = "Manual") -> Document:
        ordinal = next(made)
        document = Document.objects.create(
            owner=owner,
            workspace=workspace_personal(user=owner),
            title=title,
            filename=f"{title}.txt",
            file="documents/x.txt",
            sha256="0" * 64,
            status=Document.Status.READY,
            page_count=pages,
        )
        Page.objects.bulk_create(
            Page(document=document, number=n, text=prose(n * 7 + ordinal, sentences_per_page))
            for n in range(1, pages + 1)
        )
        return document

    return make


