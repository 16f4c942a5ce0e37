"""The deployment files: what goes into the image, who runs it, and Compose from a fresh clone.

Docker itself is not needed: the build context is worked out from .dockerignore with Docker's
rules (a pattern also matches every file under a directory it matches, `**` spans folders, `!`
takes a path back in, the last matching line wins).
"""
from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import pytest
from django.conf import settings

ROOT = Path(settings.BASE_DIR)
Rules = list[tuple[bool, re.Pattern[str]]]


def _regex(pattern: str) -> re.Pattern[str]:
    out, i = "", 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out, i = out + "(?:.*/)?", i + 3
        elif pattern.startswith("**", i):
            out, i = out + ".*", i + 2
        else:
            out += {"*": "[^/]*", "?": "[^/]"}.get(pattern[i], re.escape(pattern[i]))
            i += 1
    return re.compile(out)


def dockerignore_rules() -> Rules:
    rules: Rules = []
    for line in (ROOT / ".dockerignore").read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            negate = line.startswith("!")
            rules.append((negate, _regex(line.lstrip("!").strip("/"))))
    return rules


def ignored(path: str, rules: Rules) -> bool:
    parts = path.split("/")
    candidates = ["/".join(parts[: n + 1]) for n in range(len(parts))]
    verdict = False
    for negate, regex in rules:
        if any(regex.fullmatch(candidate) for candidate in candidates):
            verdict = not negate
    return verdict


def build_context() -> set[str]:
    """The files `docker build .` sends, as paths relative to the project."""
    rules = dockerignore_rules()
    exceptions = [regex.pattern for negate, regex in rules if negate]
    sent: set[str] = set()
    for folder, dirs, files in os.walk(ROOT):
        relative = Path(folder).relative_to(ROOT).as_posix()
        prefix = "" if relative == "." else relative + "/"
        # A folder left out whole is not walked (.venv, .git), unless a `!` line reaches inside it.
        dirs[:] = [
            name for name in dirs
            if not ignored(prefix + name, rules) or any(e.startswith(re.escape(prefix + name)) for e in exceptions)
        ]  # fmt: skip
        sent.update(prefix + name for name in files if not ignored(prefix + name, rules))
    return sent


def test_the_image_leaves_out_tests_benchmarks_the_fake_server_and_local_state() -> None:
    sent = build_context()
    unwanted = re.compile(
        r"(^|/)tests/|^bench/|^testing/|^var/|^staticfiles/|^\.venv/|^\.git/|^\.env$|^conftest\.py$"
    )
    assert not sorted(path for path in sent if unwanted.search(path))[:10]
    assert not any(path.endswith("fakellm.py") or "/fakellm/" in path for path in sent)


def test_the_image_keeps_what_the_app_runs_on() -> None:
    sent = build_context()
    needed = {"manage.py", "requirements.txt", "masscer/settings.py", "masscer/wsgi.py", "templates/base.html",
              "static/masscer/app.css", "static/masscer/app.js", "scripts/docker-entrypoint.sh",
              "training/models.py", "training/migrations/0001_initial.py"}  # fmt: skip
    assert needed <= sent, needed - sent


def test_the_image_collects_static_files_and_runs_as_a_user_without_privileges() -> None:
    lines = [line.strip() for line in (ROOT / "Dockerfile").read_text().splitlines()]
    users = [line.split()[1] for line in lines if line.startswith("USER ")]
    assert users and users[-1] not in ("root", "0")
    text = " ".join(lines)
    assert "--only-binary=:all:" in text
    assert "collectstatic --noinput" in text
    assert "DJANGO_DEBUG=0" in text


def env_files(service: dict) -> list:
    entry = service.get("env_file")
    return [] if entry is None else entry if isinstance(entry, list) else [entry]


def test_compose_starts_from_a_fresh_clone_without_a_dotenv_file() -> None:
    yaml = pytest.importorskip("yaml")
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    raw = (ROOT / "docker-compose.yml").read_text()
    assert not re.search(r"\$\{[A-Z_]+:?\?", raw), "a ${VAR?} reference stops compose when VAR is unset"
    for name, service in compose["services"].items():
        for entry in env_files(service):
            assert isinstance(entry, dict) and entry.get("required") is False, (name, entry)
    assert compose["services"]["web"]["environment"]["DJANGO_DEBUG"] == "0"


def test_the_example_dotenv_documents_real_settings() -> None:
    example = (ROOT / ".env.example").read_text()
    named = set(re.findall(r"^#?\s*([A-Z][A-Z0-9_]+)=", example, flags=re.M))
    read = (ROOT / "masscer" / "settings.py").read_text()
    assert {"DJANGO_SECRET_KEY", "DJANGO_ALLOWED_HOSTS", "DJANGO_SECURE_SSL_REDIRECT", "MASSCER_LLM_BASE_URL"} <= named
    assert not {name for name in named if f'"{name}"' not in read}, "names in .env.example the settings never read"
    compose = set(re.findall(r"\$\{([A-Z_]+)", (ROOT / "docker-compose.yml").read_text()))
    assert compose <= named, compose - named


def entrypoint(var_dir: Path, **env: str) -> subprocess.Popen[str]:
    environment = {"PATH": os.environ["PATH"], "MASSCER_VAR_DIR": str(var_dir), **env}
    return subprocess.Popen(
        ["sh", str(ROOT / "scripts" / "docker-entrypoint.sh"), "sh", "-c", 'printf %s "$DJANGO_SECRET_KEY"'],
        env=environment, stdout=subprocess.PIPE, text=True,
    )  # fmt: skip


def test_services_starting_together_share_one_generated_secret_key(tmp_path) -> None:
    starts = [entrypoint(tmp_path) for _ in range(6)]
    keys = {process.communicate(timeout=30)[0] for process in starts}
    assert len(keys) == 1 and len(keys.pop()) >= 50
    key_file = tmp_path / "secret_key"
    assert key_file.stat().st_mode & 0o077 == 0
    assert [path.name for path in tmp_path.iterdir()] == ["secret_key"]
    assert entrypoint(tmp_path).communicate(timeout=30)[0] == key_file.read_text().strip()


def test_a_given_secret_key_wins_over_the_generated_one(tmp_path) -> None:
    assert entrypoint(tmp_path, DJANGO_SECRET_KEY="from-the-environment").communicate(timeout=30)[0] == (
        "from-the-environment"
    )
    assert not (tmp_path / "secret_key").exists()


def _llm_pool(**env: str) -> tuple[str, str]:
    """What `make run`, `make worker` and `make worker-llm` start the llm worker with."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("MASSCER_LLM", "DATABASE_URL"))}
    out = subprocess.run(
        ["sh", str(ROOT / "scripts" / "llm_pool.sh")], env={**clean, **env}, capture_output=True, text=True, check=True
    ).stdout
    values = dict(part.split("=", 1) for part in out.split()[1:])
    return values["MASSCER_LLM_POOL"], values["MASSCER_LLM_WORKER_CONCURRENCY"]


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({}, ("threads", "1")),  # the embedded model serves one call at a time
        ({"DATABASE_URL": "postgres://db/masscer"}, ("threads", "1")),
        ({"MASSCER_LLM_BASE_URL": "http://model/v1"}, ("threads", "64")),  # SQLite: no greenlets
        ({"MASSCER_LLM_BASE_URL": "http://model/v1", "DATABASE_URL": "postgres://db/m"}, ("gevent", "64")),
        (
            {"MASSCER_LLM_BASE_URL": "http://m", "DATABASE_URL": "postgres://m", "MASSCER_LLM_MAX_CONCURRENCY": "16"},
            ("gevent", "16"),
        ),
        ({"MASSCER_LLM_BASE_URL": "http://m/v1", "MASSCER_LLM_MAX_CONCURRENCY": "0"}, ("threads", "64")),
        ({"MASSCER_LLM_POOL": "solo", "MASSCER_LLM_WORKER_CONCURRENCY": "3"}, ("solo", "3")),  # overrides win
    ],
)
def test_every_make_target_sizes_the_llm_worker_for_its_model_and_database(env, expected) -> None:
    assert _llm_pool(**env) == expected


def test_the_make_targets_that_start_an_llm_worker_size_it_the_same_way() -> None:
    makefile = (ROOT / "Makefile").read_text()
    for target in ("run", "worker", "worker-llm"):
        body = makefile.split(f"\n{target}:", 1)[1].split("\n\n", 1)[0]
        assert "$(LLM_POOL_ENV)" in body, f"make {target} does not size the llm worker"
    assert 'LLM_POOL_ENV := eval "$$(sh scripts/llm_pool.sh)"' in makefile
