"""Big conversations: the chunk preview, the Train dialog, its estimate and the API read of one
conversation of ``--messages`` messages (default 100,000), twice each (cold, then warm).

Run from the project root::

    .venv/bin/python bench/big_conversation_bench.py [--messages 100000]

It uses a SQLite database of its own in a temporary folder (migrated, seeded, removed) and
Django's test client in process; the figures are wall times of single requests.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(PROJECT_ROOT))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--messages", type=int, default=100_000)
    args = parser.parse_args()
    folder = tempfile.mkdtemp(prefix="masscer-bigconv-")
    os.environ["DATABASE_URL"] = f"sqlite:///{folder}/db.sqlite3"
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "masscer.settings")
    os.environ.setdefault("DJANGO_DEBUG", "1")  # a development run
    import django

    django.setup()
    from django.conf import settings
    from django.contrib.auth import get_user_model
    from django.core.management import call_command
    from django.test import Client

    from conversations.models import Message
    from conversations.services import conversation_create

    settings.ALLOWED_HOSTS = ["*"]
    call_command("migrate", verbosity=0)
    alice = get_user_model().objects.create_user("alice", password="x")  # noqa: S106
    conversation = conversation_create(owner=alice, title="big", messages=[{"role": "user", "content": "hi"}])
    words = ["the", "invoice", "was", "sent", "twice", "because", "the", "billing", "job", "retried", "after",
             "a", "timeout"]
    rows = [
        Message(
            conversation=conversation,
            position=i,
            role="user" if i % 2 else "assistant",
            content=f"Message {i}: " + " ".join(words[(i + k) % len(words)] for k in range(18)),
        )
        for i in range(1, args.messages)
    ]
    Message.objects.bulk_create(rows, batch_size=5000)
    client = Client()
    client.force_login(alice)
    pk = conversation.pk
    urls = {
        "chunk preview": f"/jobs/chunks/conversation/{pk}/",
        "chunk preview p50": f"/jobs/chunks/conversation/{pk}/?page=50",
        "train dialog": f"/jobs/new/?conversation={pk}",
        "estimate": f"/jobs/estimate/?conversation={pk}&count=100&style=mine",
        "api conversation": f"/api/conversations/{pk}",
        "api messages p1": f"/api/conversations/{pk}/messages?limit=500",
        "api messages deep": f"/api/conversations/{pk}/messages?limit=500&offset={args.messages - 500}",
        "thread page": f"/conversations/{pk}/",
    }
    print(f"{args.messages:,} messages")
    for name, url in urls.items():
        for label in ("first", "again"):
            start = time.perf_counter()
            response = client.get(url)
            took = time.perf_counter() - start
            print(f"{name:20} {label:6} {response.status_code} {took:7.3f} s {len(response.content) / 1e6:8.3f} MB")


if __name__ == "__main__":
    main()
