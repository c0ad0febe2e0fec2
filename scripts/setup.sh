#!/usr/bin/env bash
# Creates .venv (if missing) and installs customnn into it with its test tools.
# `pip install torch==2.13.0` first: on this workplace's machines it takes the local CPU wheel
# instead of a multi-GB CUDA build. pip's output goes to .venv/setup.log, shown only on failure.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -x .venv/bin/python ]; then
    echo "setting up .venv (first run: a minute or two)" >&2
    python3 -m venv .venv
fi
log=.venv/setup.log
install() { .venv/bin/python -m pip install "$@" >>"$log" 2>&1; }
: >"$log"
if ! install -q "torch==2.13.0"; then
    install -q torch || { cat "$log" >&2; echo "setup failed: could not install torch (log above)" >&2; exit 1; }
fi
install -q -e ".[test]" || { cat "$log" >&2; echo "setup failed: could not install customnn (log above)" >&2; exit 1; }
