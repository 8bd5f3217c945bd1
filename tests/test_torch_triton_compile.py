"""The Triton kernels compile for a CUDA GPU (sm_90, H100/H200) ahead of time, on a machine
without one: the interpreter tests check values, this checks that the same kernels pass
triton's compiler (types of loop-carried values, constexpr branches, masks) down to PTX and
ptxas, with no local (stack) memory."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path
from typing import Any

import pytest

triton = pytest.importorskip("triton", reason="the triton extra is not installed")
tl = pytest.importorskip("triton.language")

if os.environ.get("TRITON_INTERPRET"):
    pytest.skip(
        "TRITON_INTERPRET is set: kernels are built for the interpreter", allow_module_level=True
    )


ACC = {"fp32": tl.float32, "fp64": tl.float64}


def _kernels() -> Any:
    spec = importlib.util.find_spec("haepo_backends")
    assert spec is not None and spec.submodule_search_locations
    path = Path(next(iter(spec.submodule_search_locations))) / "torch" / "_triton.py"
    mod_spec = importlib.util.spec_from_file_location("_haepo_triton_aot", path)
    assert mod_spec is not None and mod_spec.loader is not None
    mod = importlib.util.module_from_spec(mod_spec)
    mod_spec.loader.exec_module(mod)
    return mod


def _compile(fn: Any, pointers: dict[str, str], scalars: dict[str, str], consts: dict[str, Any]):
    try:
        from triton.backends.compiler import GPUTarget
        from triton.compiler import ASTSource
    except ImportError as e:  # pragma: no cover - a triton without these entry points
        pytest.skip(f"triton's ahead-of-time compile API is not available: {e}")
    sig = {k: f"*{v}" for k, v in pointers.items()} | scalars | {k: "constexpr" for k in consts}
    assert set(sig) == set(fn.arg_names), sorted(set(fn.arg_names) ^ set(sig))
    src = ASTSource(fn, sig, consts)
    return triton.compile(src, target=GPUTarget("cuda", 90, 32), options={"num_warps": 8})


@pytest.mark.parametrize(
    ("zt", "acc", "has_ref", "kl_sweep", "block"),
    [("bf16", "fp32", True, False, 4096), ("fp32", "fp32", True, True, 4096),
     ("fp64", "fp64", False, False, 2048)],
)  # fmt: skip
def test_forward_kernel_compiles_for_sm90(zt, acc, has_ref, kl_sweep, block) -> None:
    T = _kernels()
    k = _compile(
        T._fwd_kernel,
        {"z_ptr": zt, "r_ptr": zt, "a_ptr": "i64", "logp_ptr": acc, "ent_ptr": acc, "kl_ptr": acc,
         "lse_ptr": acc, "lser_ptr": acc},
        {"z_stride": "i64", "r_stride": "i64", "V": "i32"},
        {"HAS_REF": has_ref, "KL_SWEEP": kl_sweep, "STORE_LSE": has_ref, "ACC": ACC[acc],
         "BLOCK": block},
    )  # fmt: skip
    ptx = k.asm["ptx"]
    assert ".entry _fwd_kernel" in ptx
    assert ".local" not in ptx  # no local (stack) memory: every tile lives in registers


@pytest.mark.parametrize(
    ("zt", "ot", "flags"),
    [("fp32", "fp32", (True, True, True, True, False, False, False, True, True, True)),
     ("bf16", "bf16", (True, True, True, True, True, False, True, True, True, False)),
     ("fp16", "fp32", (True, False, False, False, True, False, False, False, False, True)),
     ("fp32", "fp32", (True, True, True, True, True, True, False, False, False, False))],
)  # fmt: skip
def test_backward_kernel_compiles_for_sm90(zt, ot, flags) -> None:
    T = _kernels()
    names = ("HAS_GL", "HAS_GE", "USE_KL", "HAS_REF", "LSE_GIVEN", "REF_LSE_GIVEN", "STATS",
             "SWEEP_Z", "SWEEP_R", "FLOOR_REF")  # fmt: skip
    acc = "fp32"
    k = _compile(
        T._bwd_kernel,
        {"z_ptr": zt, "r_ptr": zt, "a_ptr": "i64", "lse_ptr": acc, "lser_ptr": acc, "ent_ptr": acc,
         "kl_ptr": acc,
         "gl_ptr": acc, "ge_ptr": acc, "gk_ptr": acc, "out_ptr": ot},
        {"z_stride": "i64", "r_stride": "i64", "gl_stride": "i64", "ge_stride": "i64",
         "gk_stride": "i64", "out_stride": "i64", "V": "i32"},
        dict(zip(names, flags)) | {"ACC": tl.float32, "BLOCK": 4096},
    )  # fmt: skip
    ptx = k.asm["ptx"]
    assert ".entry _bwd_kernel" in ptx
    assert ".local" not in ptx
