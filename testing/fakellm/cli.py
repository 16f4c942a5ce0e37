"""Standalone: ``python -m testing.fakellm --port 8765 --latency 0.5 --capacity 64``."""

from __future__ import annotations

import argparse
import json
import signal
import threading
from collections.abc import Callable, Sequence
from types import FrameType

from .server import FakeLLMServer


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Fake OpenAI-compatible model server")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument(
        "--latency",
        type=float,
        default=0.0,
        help="seconds added to every generation call",
    )
    parser.add_argument(
        "--capacity", type=int, default=None, help="max concurrent calls before 429"
    )
    parser.add_argument(
        "--rpm", type=int, default=None, help="requests per minute before 429"
    )
    parser.add_argument(
        "--model", action="append", dest="models", help="model id to list (repeatable)"
    )
    parser.add_argument(
        "--strict-models", action="store_true", help="404 for models not listed"
    )
    parser.add_argument(
        "--chunk-delay",
        type=float,
        default=0.0,
        help="seconds between the chunks of a streamed answer",
    )
    parser.add_argument(
        "--batch-delay",
        type=float,
        default=0.0,
        help="seconds a batch stays in progress before its lines are answered",
    )
    parser.add_argument(
        "--default", type=json.loads, default=None, help="default behaviour(s) as JSON"
    )
    parser.add_argument(
        "--script",
        type=json.loads,
        default=None,
        help="scripted behaviours as a JSON list",
    )
    args = parser.parse_args(argv)
    server = FakeLLMServer(
        host=args.host,
        port=args.port,
        latency=args.latency,
        capacity=args.capacity,
        rpm=args.rpm,
        models=args.models or ("fake-model",),
        strict_models=args.strict_models,
        chunk_delay=args.chunk_delay,
        batch_delay=args.batch_delay,
    )
    if args.default is not None:
        server.set_default(args.default)
    if args.script is not None:
        server.script(args.script)
    stopped = threading.Event()
    _on_signals(lambda: stopped.set())
    server.start()
    print(server.base_url, flush=True)
    try:
        while not stopped.wait(0.5):
            pass
    except KeyboardInterrupt:
        pass
    finally:
        server.stop()
    return 0


def _on_signals(callback: Callable[[], None]) -> None:
    def handle(signum: int, frame: FrameType | None) -> None:
        callback()

    signal.signal(signal.SIGTERM, handle)
    signal.signal(signal.SIGINT, handle)
