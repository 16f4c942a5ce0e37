#!/bin/sh
# The image's entrypoint. Without DJANGO_SECRET_KEY, one is generated once into the data folder
# (the volume every service of docker-compose.yml shares), so `docker compose up` needs no .env
# and every service signs with the same key, across restarts too.
set -eu
if [ -z "${DJANGO_SECRET_KEY:-}" ]; then
    key_file="${MASSCER_VAR_DIR:-/data}/secret_key"
    if [ ! -s "$key_file" ]; then
        candidate="$(mktemp "$key_file.XXXXXX")"
        python -c 'import secrets; print(secrets.token_urlsafe(50))' > "$candidate"
        # A hard link is made whole or not at all: of services starting together, one key wins.
        ln "$candidate" "$key_file" 2>/dev/null || true
        rm -f "$candidate"
    fi
    DJANGO_SECRET_KEY="$(cat "$key_file")"
    export DJANGO_SECRET_KEY
fi
exec "$@"
