#!/usr/bin/env bash
# The device check: one run on one CUDA GPU (H100 / H200), under 8 minutes.
#   (a) the conformance suite with --device cuda on every registered backend and variant
#       (the torch backend's triton variant included when triton can run);
#   (b) benchmarks/bench_device.py: the torch lean paths in bf16 and fp32, V = 32k and 152k,
#       T up to 8k, against naive torch and Liger-Kernel's GRPO losses (the fused-linear one
#       compiled with torch.compile), ratios and absolute times.
#
# Usage (from anywhere):  bash benchmarks/device_check.sh [OUTDIR]
#   OUTDIR (default: device_check_out/, or $OUT when set) receives conformance.json,
#   conformance.log, bench_device.json and bench_device.log.
#
# The device machine has no internet. Assumed installed there, in the active Python (or in
# .venv/ of this checkout, activated when present):
#   torch with CUDA (the version pinned in pyproject.toml), triton >= 3.0, liger-kernel,
#   hypothesis, numpy, array-api-compat, tqdm, setuptools >= 68 and wheel.
# Install step (offline): this checkout is installed editable without dependencies, so the
# haepo.backends entry points exist for `--all`; if that fails (no setuptools), the packages
# are put on PYTHONPATH through a link directory and the backends are named explicitly.
set -uo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
OUTDIR="${1:-${OUT:-$ROOT/device_check_out}}"
mkdir -p "$OUTDIR"
cd "$ROOT"
if [ -f .venv/bin/activate ]; then
    # shellcheck disable=SC1091
    source .venv/bin/activate
fi
export TRITON_DEFAULT_FP_FUSION=1  # triton 3.9 warns when unset; 1 keeps its current default
unset TRITON_INTERPRET             # compiled kernels on the GPU, not the CPU interpreter

SECONDS=0
BACKENDS=(--all)
# Already installed from this checkout? (An install of another copy would test other code.)
if ! python -P - "$ROOT" 2>/dev/null <<'EOF'
import os, sys
import haepo_backends, haepo_conformance
here = os.path.realpath(sys.argv[1])
sys.exit(0 if os.path.realpath(haepo_backends.__file__).startswith(here + os.sep) else 1)
EOF
then
    echo "== installing this checkout (editable, offline, no dependencies)"
    if ! python -m pip install --no-deps --no-build-isolation --no-index -q -e . ; then
        echo "== pip install failed: using a link directory on PYTHONPATH"
        LINKS="$OUTDIR/pythonpath"
        mkdir -p "$LINKS"
        ln -sfn "$ROOT/haepo_core" "$LINKS/haepo_core"
        ln -sfn "$ROOT/backends" "$LINKS/haepo_backends"
        ln -sfn "$ROOT/conformance" "$LINKS/haepo_conformance"
        ln -sfn "$ROOT/adapters" "$LINKS/haepo_adapters"
        export PYTHONPATH="$LINKS${PYTHONPATH:+:$PYTHONPATH}"
        # Without installed metadata there are no entry points: name the backends.
        BACKENDS=(--backend haepo_core._backend:numpy_backend --backend haepo_backends.torch:backend)
    fi
fi

echo "== environment"
python -P - <<'EOF' || { echo "environment check failed"; exit 2; }
import torch
assert torch.cuda.is_available(), "no CUDA device visible to torch"
print("torch", torch.__version__, "cuda", torch.version.cuda, torch.cuda.get_device_name(0))
import triton
print("triton", triton.__version__)
try:
    import liger_kernel  # noqa: F401
    from importlib.metadata import version
    print("liger-kernel", version("liger-kernel"))
except ImportError:
    print("liger-kernel: NOT installed (its variants will be skipped)")
from haepo_backends.torch import _triton
print("haepo triton kernels available on cuda:", _triton.available("cuda"))
EOF

status=0
echo "== (a) conformance on cuda (budget 200 s)"
timeout 200 python -P -m haepo_conformance "${BACKENDS[@]}" --device cuda \
    --max-examples 8 --derandomize --no-shrink \
    --report "$OUTDIR/conformance.json" 2>&1 | tee "$OUTDIR/conformance.log"
rc=${PIPESTATUS[0]}
[ "$rc" -eq 124 ] && echo "conformance: stopped at its 200 s budget"
[ "$rc" -ne 0 ] && status=1
echo "conformance exit status: $rc (after ${SECONDS} s)"

echo "== (b) device benchmarks (start no configuration after 160 s; hard stop at 220 s)"
timeout 220 python -P benchmarks/bench_device.py --budget-s 160 --repeats 3 \
    --json "$OUTDIR/bench_device.json" 2>&1 | tee "$OUTDIR/bench_device.log"
rc=${PIPESTATUS[0]}
[ "$rc" -eq 124 ] && echo "bench_device: stopped at its 220 s limit"
[ "$rc" -ne 0 ] && status=1
echo "device check done in ${SECONDS} s, status $status"
exit "$status"
