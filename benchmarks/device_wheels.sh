#!/usr/bin/env bash
# Download, here, the wheels the device check needs and the GPU machine lacks (Python 3.12,
# x86-64, no network there) into .whl/ at the repository root (git-ignored), then check that
# every need is satisfiable there. Carry .whl with the device run.
#   bash benchmarks/device_wheels.sh [DEST]
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
DEST="${1:-$ROOT/.whl}"
PY="${PYTHON:-$ROOT/.venv/bin/python}"
[ -x "$PY" ] || PY=python3
"$PY" "$ROOT/benchmarks/_device_env.py" wheels --dest "$DEST"
"$PY" "$ROOT/benchmarks/_device_env.py" check --wheels "$DEST"
