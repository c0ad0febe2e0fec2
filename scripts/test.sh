#!/usr/bin/env bash
# Sets up .venv and runs the test suite. Extra arguments go to pytest (e.g. `-m soak`, `-k conv`).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
# The data sets lie beside the checkout in this workplace; elsewhere they are downloaded to the cache.
if [ -z "${CUSTOMNN_DATA:-}" ] && [ -d ../shared/data ]; then
    export CUSTOMNN_DATA="$(cd ../shared/data && pwd)"
fi
exec .venv/bin/python -m pytest -q "$@"
