#!/usr/bin/env bash
# The whole test job: lint, the test suite, and the conformance suite on every installed backend.
# Sets up .venv on first use. Extra arguments go to pytest (e.g. -k torch, -x).
# Heavier Hypothesis runs: HAEPO_HYPOTHESIS_PROFILE=heavy scripts/test.sh
set -euo pipefail
HAEPO_EXTRAS="all" source "$(dirname "$0")/_venv.sh"
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_DATASETS_OFFLINE=1 MPLBACKEND=Agg
echo "[haepo] ruff"
ruff check .
ruff format --check .
echo "[haepo] conformance suite on every installed backend (one line per property and backend)"
mkdir -p runs
SECONDS=0
python -P -m haepo_conformance --all --max-examples "${HAEPO_CONFORMANCE_EXAMPLES:-5}" \
  --derandomize --no-shrink --report runs/conformance.json
echo "[haepo] conformance took ${SECONDS}s"
echo "[haepo] pytest"
# -P: the repo root is not put on sys.path, so the bare folders backends/, adapters/,
# conformance/ can never shadow the installed haepo_* packages.
python -P -m pytest -q "$@"
