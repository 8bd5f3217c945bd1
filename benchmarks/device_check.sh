#!/usr/bin/env bash
# The device check: one run on one CUDA GPU (H100 / H200), done in under 7 minutes.
#   (a) the conformance suite with --device cuda on the torch backend (every variant, the
#       Triton one included) and on the JAX backend;
#   (b) benchmarks/bench_device.py: the torch lean paths in bf16 and fp32, V = 32k and 152k,
#       T up to 8k, against naive torch and Liger-Kernel's GRPO losses (the fused-linear one
#       compiled with torch.compile): time and peak memory, ratios measured side by side;
#   (c) benchmarks/bench_trl_step.py: one optimizer step of HAEPOTrainer and GRPOTrainer on a
#       randomly initialised Llama-style model in bf16, equal shapes.
#
# Usage (from anywhere):
#   bash benchmarks/device_wheels.sh            # here, once: the wheels the GPU machine lacks
#   bash benchmarks/device_check.sh --dry-run   # here, on CPU: is everything satisfiable?
#   bash benchmarks/device_check.sh             # there, with .whl carried
# Everything goes to $OUT (default: device_check_out/): device_check.log, conformance.json,
# bench_device.json, bench_device.png, trl_step.json (at most 8 files). Each stage prints its
# table as it goes, so a run cut off early still returns figures.
#
# Nothing is built or installed into the machine's Python: the carried wheels go to a private
# --target folder, and this checkout is put on PYTHONPATH through links named after the
# packages (haepo_backends -> backends/, ...), so the project's own torch pin never matters.
set -uo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
DRY=0
if [ "${1:-}" = "--dry-run" ]; then DRY=1; shift; fi
OUTDIR="${1:-${OUT:-$ROOT/device_check_out}}"
mkdir -p "$OUTDIR"
cd "$ROOT"
exec > >(tee -a "$OUTDIR/device_check.log") 2>&1
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
export XLA_PYTHON_CLIENT_PREALLOCATE=false  # JAX and torch share the GPU in stage (a)
export TRITON_DEFAULT_FP_FUSION=1           # triton warns when unset; 1 keeps its default
unset TRITON_INTERPRET                      # compiled kernels on the GPU, not the interpreter
PY="${PYTHON:-python3}"
if [ "$DRY" = 1 ] && [ -x "$ROOT/.venv/bin/python" ]; then PY="$ROOT/.venv/bin/python"; fi
SECONDS=0

echo "== packages (the machine's list plus the carried wheels in .whl/)"
"$PY" -P benchmarks/_device_env.py check --wheels "$ROOT/.whl" || {
    echo "unmet needs: run benchmarks/device_wheels.sh here and carry .whl"
    exit 2
}

WORK="$(mktemp -d)"
SITE="$WORK/site"
LINKS="$WORK/links"
mkdir -p "$LINKS"
echo "== carried wheels -> $SITE (no index, no dependencies)"
if [ "$DRY" = 1 ]; then
    # Here the interpreter is 3.11: install only to prove the wheels unpack; the venv's own
    # packages are used for the smoke runs below.
    "$PY" -m pip install --quiet --no-index --no-deps --no-compile --target "$SITE" \
        --python-version 3.12 --only-binary=:all: "$ROOT"/.whl/*.whl || exit 2
else
    "$PY" -m pip install --quiet --no-index --no-deps --no-compile --target "$SITE" \
        "$ROOT"/.whl/*.whl || exit 2
fi
ln -sfn "$ROOT/haepo_core" "$LINKS/haepo_core"
ln -sfn "$ROOT/backends" "$LINKS/haepo_backends"
ln -sfn "$ROOT/adapters" "$LINKS/haepo_adapters"
ln -sfn "$ROOT/conformance" "$LINKS/haepo_conformance"
if [ "$DRY" = 1 ]; then
    export PYTHONPATH="$LINKS${PYTHONPATH:+:$PYTHONPATH}"
else
    export PYTHONPATH="$LINKS:$SITE${PYTHONPATH:+:$PYTHONPATH}"
fi

echo "== environment"
"$PY" -P - "$DRY" <<'EOF' || { echo "environment check failed"; exit 2; }
import sys
dry = sys.argv[1] == "1"
import torch
if not dry:
    assert torch.cuda.is_available(), "no CUDA device visible to torch"
    print("torch", torch.__version__, "cuda", torch.version.cuda, torch.cuda.get_device_name(0))
else:
    print("torch", torch.__version__, "(dry run on CPU)")
import array_api_compat, hypothesis, numpy, transformers, accelerate, datasets, trl, tqdm
import matplotlib
import haepo_core, haepo_backends.torch, haepo_adapters.trl, haepo_conformance
from importlib.metadata import version
for name in ("array-api-compat", "hypothesis", "numpy", "transformers", "trl", "datasets"):
    print(name, version(name))
try:
    import triton, liger_kernel  # noqa: F401
    print("triton", triton.__version__, "liger-kernel", version("liger-kernel"))
except ImportError as e:
    print("missing:", e)
    if not dry:
        raise
from haepo_backends.torch import _triton
print("haepo triton kernels available:", _triton.available("cuda" if not dry else None))
EOF

DEVICE=(--device cuda)
CONF=(--max-examples 8)
BENCH=(--budget-s 110 --repeats 3)
STEP=()
if [ "$DRY" = 1 ]; then
    DEVICE=()
    CONF=(--max-examples 1 --property values --property hidden.values)
    BENCH=(--smoke)
    STEP=(--smoke)
fi
status=0
run_stage() {  # name, time limit in s, command...
    local name="$1" limit="$2"
    shift 2
    echo "== $name (limit ${limit} s, at ${SECONDS} s)"
    timeout "$limit" "$@"
    local rc=$?
    [ "$rc" -eq 124 ] && echo "$name: stopped at its ${limit} s limit"
    [ "$rc" -ne 0 ] && status=1
    echo "$name: exit status $rc (at ${SECONDS} s)"
}

run_stage "(a) conformance, torch" 100 "$PY" -P -m haepo_conformance \
    --backend haepo_backends.torch:backend "${DEVICE[@]}" "${CONF[@]}" --derandomize \
    --no-shrink --report "$OUTDIR/conformance.json"
run_stage "(a) conformance, jax" 50 "$PY" -P -m haepo_conformance \
    --backend haepo_backends.jax:backend "${CONF[@]}" --derandomize --no-shrink \
    --report "$WORK/conformance_jax.json"
[ -f "$WORK/conformance_jax.json" ] && cp "$WORK/conformance_jax.json" "$OUTDIR/"
run_stage "(b) lean paths against naive torch and Liger" 160 "$PY" -P benchmarks/bench_device.py \
    "${BENCH[@]}" --json "$OUTDIR/bench_device.json" --plot "$OUTDIR/bench_device.png"
run_stage "(c) trainer step, HAEPOTrainer against GRPOTrainer" 80 "$PY" -P \
    benchmarks/bench_trl_step.py "${STEP[@]}" --json "$OUTDIR/trl_step.json"
echo "device check done in ${SECONDS} s, status $status"
ls -la "$OUTDIR"
rm -rf "$WORK"
exit "$status"
