# Sourced by scripts/train.sh and scripts/test.sh: create (or reuse) the project's virtual
# environment and install the project with the extras given in $HAEPO_EXTRAS.
# The install is skipped when pyproject.toml and the extras are unchanged since the last one.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${HAEPO_VENV:-$ROOT/.venv}"
PY="${PYTHON:-python3}"
if [ ! -x "$VENV/bin/python" ]; then
  echo "[haepo] creating virtual environment $VENV"
  "$PY" -m venv "$VENV"
fi
STAMP="$VENV/.haepo-install-${HAEPO_EXTRAS//,/-}"
WANT="$(cat "$ROOT/pyproject.toml" "$ROOT/scripts/constraints.txt" | sha256sum | cut -c1-16)"
if [ ! -f "$STAMP" ] || [ "$(cat "$STAMP")" != "$WANT" ]; then
  echo "[haepo] installing haepo[$HAEPO_EXTRAS] into $VENV (first run: a couple of minutes)"
  "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check \
    -c "$ROOT/scripts/constraints.txt" -e "$ROOT[$HAEPO_EXTRAS]" \
    2> >(grep -v "^WARNING: Location" >&2)
  echo "$WANT" > "$STAMP"
fi
export PATH="$VENV/bin:$PATH"
cd "$ROOT"
