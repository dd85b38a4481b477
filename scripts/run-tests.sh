#!/usr/bin/env bash
# Install everything the test suite needs on a fresh machine, then run it.
# Arguments are passed to pytest (e.g. `scripts/run-tests.sh tests/unit -x`).
set -euo pipefail
cd "$(dirname "$0")/.."

echo "== installing shoveling_ray with its test and benchmark extras"
python3 -m pip install --quiet --disable-pip-version-check -e '.[test,bench]'

missing=()
command -v dig >/dev/null 2>&1 || missing+=(dnsutils)              # the Consul DNS test
command -v redis-server >/dev/null 2>&1 || missing+=(redis-server)  # the benchmark smoke test
if [[ ${#missing[@]} -gt 0 ]]; then
  echo "== installing Debian packages: ${missing[*]}"
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi

echo "== providing a consul binary (built from source once, then cached)"
CONSUL_BIN=$(bash scripts/provide-consul.sh)
export CONSUL_BIN
# (not `| head -1`: under pipefail, consul writing after head exits is SIGPIPE, exit 141)
consul_version=$("$CONSUL_BIN" version)
echo "${consul_version%%$'\n'*}"

echo "== running the tests"
set +e
python3 -m pytest -ra --durations=25 "$@"
status=$?
set -e
if [[ $status -eq 5 ]]; then
  echo "run-tests: pytest collected no tests; that is a failure" >&2
fi
exit $status
