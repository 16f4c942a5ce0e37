# Every dev command is one obvious line: `make run`, `make test`.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
STAMP := $(VENV)/.installed
DEV_STAMP := $(VENV)/.installed-dev
# The llm worker's pool and size for this environment (scripts/llm_pool.sh: one thread for the
# embedded model, else a green pool, or threads on SQLite, as big as the endpoint's calls at once).
LLM_POOL_ENV := eval "$$(sh scripts/llm_pool.sh)"
PG_TEST_URL ?= postgres://postgres@127.0.0.1:5432/masscer
# Development is the opt-in: the settings default to production (DEBUG off, a secret key
# required), and every target here runs the development setup unless told otherwise.
export DJANGO_DEBUG ?= 1

.PHONY: run setup migrate demo worker worker-ingest worker-llm beat model web test test-sqlite test-pg \
        lint migrations-check bench bench-pages clean

# Set up everything (virtualenv, pinned requirements, migrations, demo login) and start
# the whole default stack: web, Celery workers, beat and the embedded local model. With
# MASSCER_LLM_BASE_URL set, the model is that endpoint's and the embedded one is not started.
# The embedded model serves one call at a time, so the llm worker then runs one thread
# (more would only queue at the model and run into its timeout).
# With another endpoint the llm worker is the Procfile's green pool (-P gevent): one OS thread
# holds as many calls in flight as the endpoint takes at once (MASSCER_LLM_MAX_CONCURRENCY,
# else 64), each a greenlet with its own database connection (B9 in BENCHMARKS.md).
# On SQLite (no DATABASE_URL) that worker uses threads instead: a greenlet waiting on SQLite's
# write lock would block the whole process, the holder of the lock included.
# MASSCER_LLM_POOL and MASSCER_LLM_WORKER_CONCURRENCY override the pool and its size.
run: setup
	@# The last run's model-call counters (masscer.metrics): the whole stack starts afresh.
	@rm -rf var/metrics
	@$(LLM_POOL_ENV); \
	if [ -z "$$MASSCER_LLM_BASE_URL" ]; then \
		$(VENV)/bin/honcho start -f Procfile; \
	else \
		echo "Model endpoint: $$MASSCER_LLM_BASE_URL (the embedded model is not started)"; \
		$(VENV)/bin/honcho start -f Procfile web ingest llm beat; \
	fi

setup: $(STAMP) migrate demo

# Wheels only: nothing compiles on a user's machine (about 40 s on a fast link, 1.2 GB).
$(STAMP): requirements.txt requirements-local.txt
	test -d $(VENV) || $(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip
	$(PIP) install --only-binary=:all: -r requirements-local.txt
	$(PY) -m masscer.localmodel --check
	touch $(STAMP)

$(DEV_STAMP): $(STAMP) requirements-dev.txt
	$(PIP) install --only-binary=:all: -r requirements-dev.txt
	bash scripts/ensure_browser.sh
	touch $(DEV_STAMP)

migrate: $(STAMP)
	mkdir -p var
	$(PY) manage.py migrate --noinput

demo: $(STAMP)
	$(PY) manage.py demo_setup

web: $(STAMP)
	$(PY) manage.py runserver 127.0.0.1:$${MASSCER_WEB_PORT:-8000}

# Both workers in one terminal (for production, run them separately; see docker-compose.yml).
worker: $(STAMP)
	@$(LLM_POOL_ENV); $(VENV)/bin/honcho start -f Procfile ingest llm beat

worker-ingest: $(STAMP)
	$(VENV)/bin/celery -A masscer worker -Q ingest -n ingest@%h --loglevel INFO

worker-llm: $(STAMP)
	@$(LLM_POOL_ENV); $(VENV)/bin/celery -A masscer worker -Q llm -P $$MASSCER_LLM_POOL \
		-c $$MASSCER_LLM_WORKER_CONCURRENCY -n llm@%h --loglevel INFO

beat: $(STAMP)
	$(VENV)/bin/celery -A masscer beat --loglevel INFO -s var/celerybeat-schedule

model: $(STAMP)
	$(PY) -m masscer.localmodel

# The test suite. It runs on SQLite and, when PostgreSQL is reachable (always in CI),
# again on PostgreSQL. Real Redis is needed for the worker tests (required when CI is set).
test: $(DEV_STAMP)
	$(PY) manage.py makemigrations --check --dry-run
	$(PY) -m pytest $(PYTEST_ARGS)
	$(MAKE) --no-print-directory test-pg

test-sqlite: $(DEV_STAMP)
	$(PY) -m pytest $(PYTEST_ARGS)

test-pg: $(DEV_STAMP)
	@if $(PY) scripts/pg_available.py "$(PG_TEST_URL)"; then \
		DATABASE_URL="$(PG_TEST_URL)" $(PY) -m pytest -m "not localmodel" $(PYTEST_ARGS); \
	elif [ -n "$$CI" ]; then echo "PostgreSQL is not reachable at $(PG_TEST_URL) and CI is set"; exit 1; \
	else echo "PostgreSQL not reachable: skipping the PostgreSQL run"; fi

lint: $(DEV_STAMP)
	$(VENV)/bin/ruff check .

migrations-check: $(STAMP)
	$(PY) manage.py makemigrations --check --dry-run

bench: $(DEV_STAMP)
	$(PY) bench/ingest_bench.py
	$(PY) bench/throughput_bench.py --concurrency 32 --repeat 3
	$(PY) bench/hotpath_bench.py
	$(PY) bench/ratelimit_bench.py
	$(PY) bench/token_economy_bench.py

# Pages at scale (B4): 100,000 completions in PostgreSQL under wrk against gunicorn (a few minutes).
bench-pages: $(DEV_STAMP)
	bash scripts/ensure_wrk.sh
	$(PY) bench/pages_bench.py

clean:
	rm -rf var/broker var/test*.sqlite3 var/metrics
