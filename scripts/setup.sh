#!/usr/bin/env bash
# Create .venv (once) and install the project with its pinned CPU torch. Idempotent and quiet.
set -euo pipefail
cd "$(dirname "$0")/.."
extras="${1:-dev}"
if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv
  .venv/bin/python -m pip install -q --upgrade pip
fi
stamp=".venv/.installed-$(cat pyproject.toml | sha1sum | cut -c1-12)-$extras"
if [ ! -f "$stamp" ]; then
  .venv/bin/python -m pip install -q torch==2.13.0
  .venv/bin/python -m pip install -q -e ".[$extras]" torch==2.13.0   # the exact local CPU build, held while resolving
  touch "$stamp"
fi
