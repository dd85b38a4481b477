#!/usr/bin/env bash
# Install everything the test suite needs on a fresh machine, then run it.
# Arguments are passed to pytest (e.g. `scripts/run-tests.sh tests/unit -x`).
set -euo pipefail
cd "$(dirname "$0")/.."

echo "== installing shoveling_ray with its test extras"
python3 -m pip install --quiet --disable-pip-version-check -e '.[test]'

echo "== running the tests"
set +e
python3 -m pytest -ra "$@"
status=$?
set -e
if [[ $status -eq 5 ]]; then
  echo "run-tests: pytest collected no tests; that is a failure" >&2
fi
exit $status
