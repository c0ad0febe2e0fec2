#!/usr/bin/env bash
# Creates .venv (if missing) and installs customnn into it with its test tools.
# `pip install torch==2.13.0` first: on this workplace's machines it takes the local CPU wheel
# instead of a multi-GB CUDA build.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -x .venv/bin/python ]; then
    python3 -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip >/dev/null 2>&1 || true
.venv/bin/python -m pip install -q "torch==2.13.0" || .venv/bin/python -m pip install -q torch
.venv/bin/python -m pip install -q -e ".[test]"
