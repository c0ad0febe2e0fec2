#!/usr/bin/env bash
# Sets up .venv and runs the demo: both models trained as the seed ran them, then a report.
# Extra arguments go to `customnn demo` (e.g. `--seed-setting`, `--out DIR`).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
if [ -z "${CUSTOMNN_DATA:-}" ] && [ -d ../shared/data ]; then
    export CUSTOMNN_DATA="$(cd ../shared/data && pwd)"
fi
exec .venv/bin/customnn demo "$@"
