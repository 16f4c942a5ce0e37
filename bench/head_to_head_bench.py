"""Head to head: synthetic-data-kit 0.0.5 (ingest + create) and this project on the same fake model.

Run from the project root::

    .venv/bin/python bench/head_to_head_bench.py [--repeat 3] [--write]

* synthetic-data-kit 0.0.5 is installed into a virtualenv of its own (``--sdk-venv``, default
  ``var/bench/sdk-venv``; reused when it already has that version). Network is needed for the
  install only; when it fails the script says so and exits with status 2.
* One stack is started as ``bench/capacity_bench.py`` starts it (fake model with 4 s per call
  and 64 calls at once, the Procfile's workers, MASSCER_LLM_MAX_CONCURRENCY=64), and both tools
  are pointed at its fake: synthetic-data-kit through its ``api-endpoint`` provider (the OpenAI
  client), with its own settings otherwise (chunks of 4000 characters, batches of 32).
* The runs alternate (ours, peer, ours, peer, ...), each asking for 300 pairs from
  GeoTopo-komprimiert.pdf. Peer wall = ``synthetic-data-kit ingest`` start → ``create`` end;
  delivered = pairs in its output file. Our wall = ``manage.py train`` start → end.

The fake only writes pairs from text it finds inside its ``<source>`` fence, so the peer's QA
prompt is its own default with the chunk text put inside that fence (nothing else changed: it
still asks for no particular number of pairs, and the fake then answers its default of 3).
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(PROJECT_ROOT))

from benchlib import (
    BENCHMARKS_MD,
    BenchError,
    Stack,
    interrupt_on_signals,
    markdown_block,
    print_table,
    update_benchmarks_md,
)
from capacity_bench import (
    Run,
    Setup,
    add_arguments,
    check_arguments,
    llm_worker_label,
    median_run,
    one_run,
    start_stack,
)
from throughput_bench import in_flight_profile

from masscer.lib.llm.prompts import SOURCE_CLOSE, SOURCE_OPEN

SDK_VERSION = "0.0.5"
SECTION = "## Capacity (B9)"
HEADING = "### Head to head: synthetic-data-kit 0.0.5"
SECTION_INTRO = """\
`bench/capacity_bench.py` and `bench/head_to_head_bench.py`: `manage.py train` on
GeoTopo-komprimiert.pdf with the Procfile's workers against the fake model server (4 s per
call, 64 calls at once).
"""

# Runs with the peer's interpreter: its packaged config, pointed at the fake, written to argv[1].
_CONFIG_SCRIPT = r"""
import sys, yaml
from synthetic_data_kit.utils.config import DEFAULT_CONFIG_PATH
config = yaml.safe_load(open(DEFAULT_CONFIG_PATH))
base, opened, closed = sys.argv[2], sys.argv[3], sys.argv[4]
config["llm"]["provider"] = "api-endpoint"
config["api-endpoint"].update(api_base=base, api_key="sk-bench", model="fake-model")
prompt = config["prompts"]["qa_generation"]
config["prompts"]["qa_generation"] = prompt.replace("{text}", opened + "\n{text}\n" + closed)
yaml.safe_dump(config, open(sys.argv[1], "w"), sort_keys=False)
"""


@dataclass
class PeerRun:
    wall: float
    ingest: float
    delivered: int
    calls: int
    max_in_flight: int
    mean_in_flight: float


# --- the peer's virtualenv ---------------------------------------------------------------------


def installed_version(venv: Path) -> str | None:
    python = venv / "bin" / "python"
    if not python.exists():
        return None
    probe = [str(python), "-c", "import importlib.metadata as m; print(m.version('synthetic-data-kit'))"]
    shown = subprocess.run(probe, capture_output=True, text=True, check=False)
    return shown.stdout.strip() if shown.returncode == 0 else None


def ensure_sdk(venv: Path) -> Path:
    """The peer's command, installed into `venv` first when needed (BenchError when that fails)."""
    if installed_version(venv) != SDK_VERSION:
        print(f"installing synthetic-data-kit=={SDK_VERSION} into {venv} ...", file=sys.stderr)
        steps = [
            [sys.executable, "-m", "venv", "--clear", str(venv)],
            [str(venv / "bin" / "pip"), "install", "--quiet", f"synthetic-data-kit=={SDK_VERSION}"],
        ]
        for step in steps:
            done = subprocess.run(step, capture_output=True, text=True, check=False)
            if done.returncode != 0:
                raise BenchError(f"`{' '.join(step)}` failed:\n{(done.stderr or done.stdout)[-2000:]}")
    command = venv / "bin" / "synthetic-data-kit"
    if not command.exists():
        raise BenchError(f"{command} is missing after the install")
    return command


def write_peer_config(venv: Path, path: Path, base_url: str) -> None:
    script = [str(venv / "bin" / "python"), "-c", _CONFIG_SCRIPT, str(path), base_url, SOURCE_OPEN, SOURCE_CLOSE]
    done = subprocess.run(script, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise BenchError(f"writing the synthetic-data-kit config failed:\n{done.stderr[-2000:]}")


# --- one peer run ------------------------------------------------------------------------------


def peer_step(command: list[str], cwd: Path, log: Path, timeout: float) -> None:
    with open(log, "ab") as output:
        done = subprocess.run(command, cwd=cwd, stdout=output, stderr=subprocess.STDOUT, timeout=timeout, check=False)
    if done.returncode != 0:
        raise BenchError(f"`{' '.join(command[1:4])} ...` exited with {done.returncode}; see {log}")


def peer_run(args: argparse.Namespace, sdk: Path, config: Path, setup: Setup, workdir: Path) -> PeerRun:
    setup.client.reset()
    if workdir.exists():
        shutil.rmtree(workdir)
    parsed, generated = workdir / "parsed", workdir / "generated"
    workdir.mkdir(parents=True)
    source, log = Path(args.source).resolve(), workdir / "sdk.log"
    base = [str(sdk), "-c", str(config)]
    began = time.time()
    peer_step([*base, "ingest", str(source), "-o", str(parsed)], workdir, log, args.timeout)
    ingested = time.time()
    text = parsed / f"{source.stem}.txt"
    create = [*base, "create", str(text), "--type", "qa", "-n", str(args.count), "-o", str(generated)]
    peer_step(create, workdir, log, args.timeout)
    wall = time.time() - began
    output = generated / f"{source.stem}_qa_pairs.json"
    if not output.is_file():
        raise BenchError(f"synthetic-data-kit wrote no {output.name}; see {log}")
    pairs = json.loads(output.read_text()).get("qa_pairs") or []
    calls = [c for c in setup.client.calls(brief=True) if c.get("endpoint") in ("chat", "completion")]
    peak = mean = 0.0
    if calls:
        first = min(c["started"] for c in calls)
        last = max(c["ended"] or c["started"] for c in calls)
        peak, mean, _ = in_flight_profile(calls, first, last, args.capacity)
    answered = sum(1 for c in calls if c.get("status") == 200)
    return PeerRun(wall, ingested - began, len(pairs), answered, int(peak), mean)


# --- alternation and report --------------------------------------------------------------------


def alternate(args: argparse.Namespace, sdk: Path, workdir: Path, stack: Stack) -> tuple[list[Run], list[PeerRun]]:
    setup = start_stack(args, workdir / "ours", stack)
    base_url = setup.env["MASSCER_LLM_BASE_URL"]
    config = workdir / "sdk-config.yaml"
    write_peer_config(sdk.parent.parent, config, base_url)
    source = Path(args.source).resolve()
    ours: list[Run] = []
    peers: list[PeerRun] = []
    for number in range(1, args.repeat + 1):
        print(f"round {number}/{args.repeat}: this project ...", file=sys.stderr)
        ours.append(one_run(args, setup, source))
        print(f"  {ours[-1].wall:.1f} s, {ours[-1].delivered}/{args.count}", file=sys.stderr)
        print(f"round {number}/{args.repeat}: synthetic-data-kit ...", file=sys.stderr)
        peers.append(peer_run(args, sdk, config, setup, workdir / f"sdk-{number}"))
        print(f"  {peers[-1].wall:.1f} s, {peers[-1].delivered}/{args.count}", file=sys.stderr)
    return ours, peers


def spread(values: list[float]) -> str:
    if len(values) == 1:
        return f"{values[0]:.2f} s"
    return f"{statistics.median(values):.2f} s median ({min(values):.1f}–{max(values):.1f})"


def table(args: argparse.Namespace, ours: list[Run], peers: list[PeerRun]) -> list[tuple[str, str]]:
    us = median_run(ours)
    peer = sorted(peers, key=lambda p: p.wall)[(len(peers) - 1) // 2]
    ratio = statistics.median(p.wall for p in peers) / statistics.median(r.wall for r in ours)
    return [
        ("model", f"fake, {args.latency:g} s per call, {args.capacity} at once (one server for both)"),
        ("asked", f"{args.count} pairs from {Path(args.source).name}; {len(ours)} alternated round(s)"),
        ("synthetic-data-kit wall", spread([p.wall for p in peers]) + f" (ingest {peer.ingest:.1f} s)"),
        ("synthetic-data-kit delivered", f"{peer.delivered}/{args.count}"),
        (
            "synthetic-data-kit calls",
            f"{peer.calls}; in flight max {peer.max_in_flight}, mean {peer.mean_in_flight:.1f}",
        ),
        ("this project llm worker", llm_worker_label(args)),
        ("this project wall", spread([r.wall for r in ours]) + f" (before first call {us.to_first_call:.1f} s)"),
        ("this project delivered", f"{us.delivered}/{args.count} (exact duplicates {us.duplicates})"),
        ("this project calls", f"{us.calls}; in flight max {us.max_in_flight}, mean {us.mean_in_flight:.1f}"),
        ("this project efficiency", f"{us.efficiency:.0%} of the capacity bound ({us.bound:.1f} s)"),
        ("wall ratio", f"{ratio:.2f} (peer / ours; above 1: this project is faster)"),
    ]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_arguments(parser)
    parser.add_argument("--repeat", type=int, default=1, help="alternated rounds (one run of each)")
    parser.add_argument("--sdk-venv", default=str(PROJECT_ROOT / "var" / "bench" / "sdk-venv"))
    parser.add_argument("--write", action="store_true", help="write the result to BENCHMARKS.md")
    args = parser.parse_args(argv)
    check_arguments(parser, args)
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if not Path(args.source).is_file():
        print(f"no such source file: {args.source}", file=sys.stderr)
        return 2
    try:
        sdk = ensure_sdk(Path(args.sdk_venv).resolve())
    except BenchError as exc:
        print(f"cannot install synthetic-data-kit {SDK_VERSION}: {exc}", file=sys.stderr)
        return 2
    interrupt_on_signals()
    workdir = Path(tempfile.mkdtemp(prefix="masscer-h2h-"))
    stack = Stack()
    try:
        ours, peers = alternate(args, sdk, workdir, stack)
    except KeyboardInterrupt:
        print("interrupted; workers and the fake server stopped", file=sys.stderr)
        return 130
    except (BenchError, subprocess.TimeoutExpired) as exc:
        print(f"benchmark failed: {exc}", file=sys.stderr)
        return 1
    finally:
        stack.stop()
        if args.keep:
            print(f"kept {workdir}", file=sys.stderr)
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    rows = table(args, ours, peers)
    print_table("Head to head", rows)
    if args.write:
        command = ".venv/bin/python bench/head_to_head_bench.py" + (
            f" --repeat {args.repeat}" if args.repeat > 1 else ""
        )
        block = markdown_block(HEADING, rows, command + " --write")
        update_benchmarks_md(block, HEADING, section_heading=SECTION, intro=SECTION_INTRO, before="### Findings")
        print(f"\nupdated {BENCHMARKS_MD.name} ({SECTION}, {HEADING})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
