#!/usr/bin/env bash
# Install Debian's wrk (the HTTP load generator bench/pages_bench.py drives) when it is missing.
# Only the benchmark needs it; the test suite does not.
set -euo pipefail
if command -v wrk >/dev/null 2>&1; then
  exit 0
fi
SUDO=""
if [ "$(id -u)" != "0" ]; then SUDO="sudo"; fi
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq wrk >/dev/null
command -v wrk >/dev/null
