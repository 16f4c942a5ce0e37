#!/bin/sh
# The llm worker's pool and size for the environment it runs in, printed as shell exports
# for `eval` (make run, make worker, make worker-llm all start it this way):
#
# - the embedded model (no MASSCER_LLM_BASE_URL) serves one call at a time: one thread
#   (more would only queue at the model and run into its timeout);
# - an endpoint of your own on PostgreSQL: a green pool (gevent) holding as many calls as
#   the endpoint takes at once (MASSCER_LLM_MAX_CONCURRENCY, else 64);
# - on SQLite: threads, as many: a greenlet waiting on SQLite's write lock would block the
#   whole process, the holder of the lock included.
#
# MASSCER_LLM_POOL and MASSCER_LLM_WORKER_CONCURRENCY, when set, win.
if [ -z "$MASSCER_LLM_BASE_URL" ]; then
    pool=threads
    calls=1
else
    case "$DATABASE_URL" in
        postgres*) pool=gevent ;;
        *) pool=threads ;;
    esac
    calls=${MASSCER_LLM_MAX_CONCURRENCY:-0}
    case "$calls" in
        '' | *[!0-9]* | 0) calls=64 ;;
    esac
fi
echo "export MASSCER_LLM_POOL=${MASSCER_LLM_POOL:-$pool} MASSCER_LLM_WORKER_CONCURRENCY=${MASSCER_LLM_WORKER_CONCURRENCY:-$calls}"
