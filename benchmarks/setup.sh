#!/usr/bin/env bash
# Install what the benchmarks need beyond the package: redis-server (Debian), redis-py,
# matplotlib, psutil, Ray Data for the sort baseline, and ray[default] (common.py reads the object
# stores' statistics through an API that needs its grpc).
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m pip install --quiet --disable-pip-version-check -e '.[bench]'
if ! command -v redis-server >/dev/null 2>&1; then
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server >/dev/null
fi
