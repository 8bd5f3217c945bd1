"""The Triton vocabulary kernels (``haepo_backends.torch._triton``) against plain torch and
the core, on CPU under triton's interpreter.

The interpreter is chosen when a kernel is decorated (``TRITON_INTERPRET=1`` must be set
before the module is imported), and setting it in this process would send every other
test's torch path through the slow interpreter, so the kernels run in one child process:
this file, executed as a script, loads the cases written by the parent, runs the kernels and
saves their outputs. The parent builds the inputs, the references and every assertion.
"""

from __future__ import annotations

import itertools
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch

FLOOR = -1e4  # the torch blocks' log floor for -inf logits


# --------------------------------------------------------------------------- child process


def _kernel_path() -> Path:
    import importlib.util

    spec = importlib.util.find_spec("haepo_backends")
    assert spec is not None and spec.submodule_search_locations
    return Path(next(iter(spec.submodule_search_locations))) / "torch" / "_triton.py"


def _kernels() -> Any:
    """The kernel module, loaded from its file: it imports nothing from the package, so these
    tests check the kernels even while the rest of the backend fails to import."""
    import importlib.util

    mod_spec = importlib.util.spec_from_file_location("_haepo_triton_kernels", _kernel_path())
    assert mod_spec is not None and mod_spec.loader is not None
    mod = importlib.util.module_from_spec(mod_spec)
    mod_spec.loader.exec_module(mod)
    return mod


def _child(workdir: Path) -> None:
    T = _kernels()
    cases = torch.load(workdir / "cases.pt")
    results: dict[str, Any] = {"interpreted": T.interpreted(), "available_cpu": T.available("cpu")}
    for name, c in cases.items():
        kind = c["kind"]
        if kind == "forward":
            results[name] = T.forward_block(
                c["z"], c["a"], c["ref_z"], c["finite"], block=c["block"],
                return_lse=c["return_lse"],
            )  # fmt: skip
        elif kind == "backward":
            out = c["z"].clone() if c["alias"] else None
            dz = T.backward_block(
                c["z"] if out is None else out, c["a"], c["ref_z"], c["ent"], c["kl"],
                c["g_logp"], c["g_ent"], c["g_kl"], c["finite"], out=out, block=c["block"],
                lse=c.get("lse"), ref_lse=c.get("ref_lse"),
            )  # fmt: skip
            results[name] = {"dz": dz, "same_storage": out is not None and dz is out}
        elif kind == "from_lse":
            results[name] = T.grad_block_from_lse(
                c["z"], c["a"], c["lse"], c["ref_z"], c["g_logp"], c["g_ent"], c["g_kl"],
                block=c["block"],
            )  # fmt: skip
        elif kind == "end_to_end":
            results[name] = _end_to_end(c)
    torch.save(results, workdir / "results.pt")


def _end_to_end(c: dict[str, Any]) -> dict[str, Any]:
    import haepo_backends.torch as H
    from haepo_backends.torch import _triton as T

    # Count the kernel calls, so the comparison cannot pass with the torch blocks on both sides.
    calls: dict[str, int] = {}
    for fn_name in ("forward_block", "backward_block", "grad_block_from_lse"):
        fn = getattr(T, fn_name)

        def counted(*args: Any, _fn: Any = fn, _name: str = fn_name, **kw: Any) -> Any:
            calls[_name] = calls.get(_name, 0) + 1
            return _fn(*args, **kw)

        setattr(T, fn_name, counted)
    out: dict[str, Any] = {}
    for kernel in ("torch", "triton"):
        if c["path"] == "logits":
            x = c["logits"].clone().requires_grad_()
            res = H.haepo_loss_from_logits(
                x, c["actions"], c["returns"], ref_logits=c["ref_logits"],
                group_ids=c["group_ids"], entropy_coef=0.01, kl_coef=0.05, kernel=kernel,
                chunk_size=c["chunk"],
            )  # fmt: skip
            res.loss.backward()
            out[kernel] = (res.loss.detach(), x.grad)
        else:
            h = c["hidden"].clone().requires_grad_()
            w = c["weight"].clone().requires_grad_()
            res = H.haepo_loss_from_hidden(
                h, w, c["actions"], c["returns"], ref_hidden=c["ref_hidden"],
                ref_weight=c["ref_weight"], group_ids=c["group_ids"], entropy_coef=0.01,
                kl_coef=0.05, kernel=kernel, chunk_size=c["chunk"],
            )  # fmt: skip
            res.loss.backward()
            out[kernel] = (res.loss.detach(), h.grad, w.grad)
        out[f"calls_{kernel}"] = sum(calls.values())
    return out


if __name__ == "__main__":
    _child(Path(sys.argv[1]))
    sys.exit(0)


# --------------------------------------------------------------------------- references

triton = pytest.importorskip("triton", reason="the triton extra is not installed")


def ref_forward(z: torch.Tensor, a: torch.Tensor, ref_z: torch.Tensor | None, finite: bool):
    """The torch block's values, written plainly (float64 in, float64 out)."""
    lsm = torch.log_softmax(z.double(), dim=1)
    logp = lsm.gather(1, a[:, None])[:, 0]
    lf = lsm if finite else lsm.clamp(min=FLOOR)
    p = lf.exp()
    ent = -(p * lf).sum(1)
    kl = None
    if ref_z is not None:
        rl = torch.log_softmax(ref_z.double(), dim=1)
        rl = rl if finite else rl.clamp(min=FLOOR)
        kl = (p * (lf - rl)).sum(1)
    return logp, ent, kl


def ref_backward(z, a, ref_z, ent, kl, g_logp, g_ent, g_kl, finite):
    """d(sum g_logp*logp + g_ent*H + g_kl*KL)/dz term by term (the unsimplified forms)."""
    n = z.shape[0]
    lsm = torch.log_softmax(z.double(), dim=1)
    lf = lsm if finite else lsm.clamp(min=FLOOR)
    p = lf.exp()
    zero = torch.zeros(n, dtype=torch.float64)
    gl, ge, gk = (zero if g is None else g.double().expand(n) for g in (g_logp, g_ent, g_kl))
    ent, kl = ent.double(), kl.double()
    dz = gl[:, None] * (torch.nn.functional.one_hot(a, z.shape[1]) - p)
    dz = dz - ge[:, None] * p * (lf + ent[:, None])
    if ref_z is not None and g_kl is not None:
        rl = torch.log_softmax(ref_z.double(), dim=1)
        rl = rl if finite else rl.clamp(min=FLOOR)
        dz = dz + gk[:, None] * p * (lf - rl - kl[:, None])
    return dz


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _logits(n: int, v: int, seed: int, masked: bool, dtype: torch.dtype):
    g = _gen(seed)
    z = torch.randn(n, v, generator=g, dtype=torch.float64) * 3
    r = torch.randn(n, v, generator=g, dtype=torch.float64) * 3
    a = torch.randint(0, v, (n,), generator=g)
    if masked:
        # A masked prefix longer than a 16-lane tile (whole tiles of -inf), a row masked at the
        # end too, and reference-only masks where the policy has mass (the log floor).
        z[:, :20] = float("-inf")
        z[1, 25:] = float("-inf")
        r[:, v - 4 :] = float("-inf")
        r[0, 21] = float("-inf")
        a = 20 + torch.randint(0, 5, (n,), generator=g)
    return z.to(dtype), r.to(dtype), a


def _tag(dtype: torch.dtype, masked: bool, with_ref: bool) -> str:
    return f"{str(dtype)[6:]}-{'masked' if masked else 'finite'}-{'ref' if with_ref else 'noref'}"


N, V = 5, 37  # 37 = two full 16-lane tiles and a ragged one


def _cases() -> dict[str, dict[str, Any]]:
    cases: dict[str, dict[str, Any]] = {}
    seed = 0
    for dtype, masked, with_ref, block in itertools.product(
        (torch.float64, torch.float32, torch.bfloat16), (False, True), (False, True), (16, None)
    ):
        seed += 1
        if dtype != torch.float64 and block is None:  # one tile per row: float64 is enough
            continue
        z, r, a = _logits(N, V, seed, masked, dtype)
        name = f"fwd-{_tag(dtype, masked, with_ref)}-{block}"
        cases[name] = dict(
            kind="forward", z=z, a=a, ref_z=r if with_ref else None, finite=not masked,
            block=block, return_lse=seed % 2 == 0,
        )  # fmt: skip
    # Backward: every subset of the upstream gradients, with and without a reference, finite
    # and masked logits, in float64 (tight) and float32; out aliasing z on some.
    seed = 100
    for dtype, masked, with_ref, which in itertools.product(
        (torch.float64, torch.float32), (False, True), (False, True),
        itertools.product((False, True), repeat=3),
    ):  # fmt: skip
        seed += 1
        if dtype == torch.float32 and which not in ((True, True, True), (False, True, False)):
            continue  # float32: two subsets; every subset runs in float64
        z, r, a = _logits(N, V, seed, masked, dtype)
        g = _gen(seed + 1000)
        gs = [torch.randn(N, generator=g, dtype=dtype) if w else None for w in which]
        _, ent, kl = ref_forward(z, a, r, not masked)
        alias = seed % 2 == 0
        block = 16 if seed % 3 else None
        # The forward's row log-sum-exps handed back on some cases (the one-sweep backward),
        # the reference's only on some of those (then the reference row is still swept).
        lse = torch.logsumexp(z.double(), 1) if seed % 4 < 2 else None
        ref_lse = torch.logsumexp(r.double(), 1) if seed % 4 == 0 else None
        name = f"bwd-{_tag(dtype, masked, with_ref)}-{''.join('1' if w else '0' for w in which)}"
        cases[name] = dict(
            kind="backward", z=z, a=a, ref_z=r if with_ref else None, ent=ent.to(dtype),
            kl=kl.to(dtype), g_logp=gs[0], g_ent=gs[1], g_kl=gs[2], finite=not masked,
            alias=alias, block=block, lse=lse, ref_lse=ref_lse,
        )  # fmt: skip
    # 0-d entropy / KL coefficients (one value for every row, as the from-hidden pass uses).
    z, r, a = _logits(N, V, 7, False, torch.float64)
    _, ent, kl = ref_forward(z, a, r, True)
    g0 = torch.randn(N, generator=_gen(8), dtype=torch.float64)
    cases["bwd-scalar-coefs"] = dict(
        kind="backward", z=z, a=a, ref_z=r, ent=ent, kl=kl, g_logp=g0,
        g_ent=torch.tensor(0.3, dtype=torch.float64), g_kl=torch.tensor(-0.7, dtype=torch.float64),
        finite=True, alias=False, block=16,
    )  # fmt: skip
    # bfloat16 logits: float32 statistics, bfloat16 gradient written over the logits.
    z, r, a = _logits(N, V, 9, False, torch.bfloat16)
    _, ent, kl = ref_forward(z, a, r, True)
    cases["bwd-bf16"] = dict(
        kind="backward", z=z, a=a, ref_z=r, ent=ent.float(), kl=kl.float(), g_logp=g0.float(),
        g_ent=g0.float() * 0.1, g_kl=g0.float() * 0.2, finite=True, alias=True, block=16,
    )  # fmt: skip
    # float16 logits: float32 statistics, one forward and one aliased backward.
    z, r, a = _logits(N, V, 10, True, torch.float16)
    cases["fwd-float16-masked-ref-16"] = dict(
        kind="forward", z=z, a=a, ref_z=r, finite=False, block=16, return_lse=True
    )
    _, ent, kl = ref_forward(z, a, r, False)
    cases["bwd-fp16"] = dict(
        kind="backward", z=z, a=a, ref_z=r, ent=ent.float(), kl=kl.float(), g_logp=g0.float(),
        g_ent=g0.float() * 0.1, g_kl=g0.float() * 0.2, finite=False, alias=True, block=16,
    )  # fmt: skip
    # Pass 2 of the from-hidden path: the row log-sum-exp given.
    for dtype, with_ref, block in itertools.product(
        (torch.float64, torch.float32), (False, True), (16, None)
    ):
        if dtype == torch.float32 and block is None:
            continue
        z, r, a = _logits(N, V, 11, False, dtype)
        lse = torch.logsumexp(z.double(), 1).to(dtype)
        gs = [torch.randn(N, generator=_gen(12 + i), dtype=dtype) for i in range(3)]
        cases[f"lse-{str(dtype)[6:]}-{'ref' if with_ref else 'noref'}-{block}"] = dict(
            kind="from_lse", z=z, a=a, lse=lse, ref_z=r if with_ref else None, g_logp=gs[0],
            g_ent=gs[1], g_kl=gs[2], block=block,
        )  # fmt: skip
    if _has_kernel_keyword():
        cases.update(_end_to_end_cases())
    return cases


def _has_kernel_keyword() -> bool:
    import inspect

    try:
        import haepo_backends.torch as H

        return all(
            "kernel" in inspect.signature(f).parameters
            for f in (H.haepo_loss_from_logits, H.haepo_loss_from_hidden)
        )
    except (ImportError, TypeError, ValueError):
        return False


def _end_to_end_cases() -> dict[str, dict[str, Any]]:
    g = _gen(21)
    m, t, v, h = 4, 6, 37, 8
    common = dict(
        actions=torch.randint(0, v, (m, t), generator=g),
        returns=torch.randn(m, generator=g, dtype=torch.float64),
        group_ids=torch.arange(m) // 2,
    )
    # float32 logits with a masked vocabulary (the taken tokens stay unmasked), walked in
    # chunks of 7 rows: several chunks, the last one ragged.
    masked = torch.randn(m, t, v, generator=g)
    masked[..., :10] = float("-inf")
    ref_masked = torch.randn(m, t, v, generator=g)
    ref_masked[..., :10] = float("-inf")
    return {
        "e2e-logits-float32-masked": dict(
            kind="end_to_end", path="logits", logits=masked, ref_logits=ref_masked, chunk=7,
            **(common | {"actions": 10 + torch.randint(0, v - 10, (m, t), generator=g)}),
        ),
        "e2e-logits": dict(
            kind="end_to_end", path="logits",
            logits=torch.randn(m, t, v, generator=g, dtype=torch.float64),
            ref_logits=torch.randn(m, t, v, generator=g, dtype=torch.float64), chunk=None,
            **common,
        ),
        "e2e-hidden": dict(
            kind="end_to_end", path="hidden",
            hidden=torch.randn(m, t, h, generator=g, dtype=torch.float64),
            weight=torch.randn(v, h, generator=g, dtype=torch.float64),
            ref_hidden=torch.randn(m, t, h, generator=g, dtype=torch.float64),
            ref_weight=torch.randn(v, h, generator=g, dtype=torch.float64), chunk=5, **common,
        ),
    }  # fmt: skip


CASES = _cases()


@pytest.fixture(scope="module")
def results(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    work = tmp_path_factory.mktemp("triton")
    torch.save(CASES, work / "cases.pt")
    env = dict(os.environ, TRITON_INTERPRET="1", OMP_NUM_THREADS="1")
    proc = subprocess.run(
        [sys.executable, "-P", __file__, str(work)],
        env=env, capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-4000:]
    return torch.load(work / "results.pt")


def _tol(dtype: torch.dtype) -> dict[str, float]:
    return {
        torch.float64: dict(rtol=1e-10, atol=1e-11),
        torch.float32: dict(rtol=2e-5, atol=2e-5),
        torch.bfloat16: dict(rtol=2e-5, atol=2e-5),  # float32 statistics of bf16 inputs
        torch.float16: dict(rtol=2e-5, atol=2e-5),
    }[dtype]


def _close(x: torch.Tensor, y: torch.Tensor, **tol: float) -> None:
    torch.testing.assert_close(x.double(), y.double(), **tol)


# --------------------------------------------------------------------------- tests


def test_interpreter_runs_the_kernels_on_cpu_in_the_child(results: dict[str, Any]) -> None:
    assert results["interpreted"] is True
    assert results["available_cpu"] is True


def test_cpu_is_not_available_without_the_interpreter() -> None:
    T = _kernels()
    assert T.available("cpu") == T.interpreted()
    if "TRITON_INTERPRET" not in os.environ:
        assert T.available("cpu") is False


FWD = [k for k in CASES if k.startswith("fwd-")]


@pytest.mark.parametrize("name", FWD)
def test_forward_block_matches_the_log_softmax_statistics(
    results: dict[str, Any], name: str
) -> None:
    c = CASES[name]
    logp, ent, kl, *lses = results[name]
    acc = torch.float64 if c["z"].dtype == torch.float64 else torch.float32
    assert logp.dtype == ent.dtype == acc
    e_logp, e_ent, e_kl = ref_forward(c["z"], c["a"], c["ref_z"], c["finite"])
    tol = _tol(c["z"].dtype)
    _close(logp, e_logp, **tol)
    _close(ent, e_ent, **tol)
    if c["ref_z"] is None:
        assert kl is None
    else:
        # Floored reference terms make the masked KL ~1e4 * p: compare relative to its size.
        _close(kl, e_kl, rtol=tol["rtol"], atol=tol["atol"] * max(1.0, float(e_kl.abs().max())))
    assert torch.isfinite(ent).all()
    if c["return_lse"]:
        lse, ref_lse = lses
        _close(lse, torch.logsumexp(c["z"].double(), 1), **tol)
        if c["ref_z"] is None:
            assert ref_lse is None
        else:
            _close(ref_lse, torch.logsumexp(c["ref_z"].double(), 1), **tol)
    else:
        assert lses == []


@pytest.mark.parametrize("name", [k for k in FWD if "-masked-ref-" in k])
def test_masked_reference_uses_the_log_floor_not_inf(results: dict[str, Any], name: str) -> None:
    # Row 0's reference masks a token the policy gives mass to: the torch blocks floor log p_ref
    # at -1e4 (a large finite KL), and so must the kernel.
    kl = results[name][2]
    assert torch.isfinite(kl).all() and float(kl[0]) > 1.0


def test_forward_block_matches_the_core_from_logits_values(results: dict[str, Any]) -> None:
    from haepo_core import entropy_from_logits, kl_from_logits

    for name in FWD:
        c = CASES[name]
        if c["z"].dtype != torch.float64:
            continue
        ent, kl = results[name][1:3]
        z = c["z"]
        _close(ent, entropy_from_logits(z), rtol=1e-10, atol=1e-11)
        if c["ref_z"] is not None and c["finite"]:
            _close(kl, kl_from_logits(z, c["ref_z"]), rtol=1e-10, atol=1e-11)


BWD = [k for k in CASES if k.startswith("bwd-")]


@pytest.mark.parametrize("name", BWD)
def test_backward_block_matches_the_closed_form_gradient(
    results: dict[str, Any], name: str
) -> None:
    c = CASES[name]
    r = results[name]
    dz = r["dz"]
    assert dz.dtype == c["z"].dtype and dz.shape == c["z"].shape
    if c["alias"]:
        assert r["same_storage"]
    expect = ref_backward(
        c["z"], c["a"], c["ref_z"], c["ent"], c["kl"], c["g_logp"], c["g_ent"], c["g_kl"],
        c["finite"],
    )  # fmt: skip
    if c["z"].dtype in (torch.bfloat16, torch.float16):
        # The rounding of the stored gradient (bf16: 8 bits of mantissa, fp16: 11).
        scale = max(1.0, float(expect.abs().max()))
        _close(dz, expect, rtol=1e-2, atol=1e-2 * scale)
    else:
        scale = max(1.0, float(expect.abs().max()))
        tol = _tol(c["z"].dtype)
        _close(dz, expect, rtol=tol["rtol"], atol=tol["atol"] * scale)
    assert torch.isfinite(dz).all()


def test_backward_block_matches_autograd_in_float64(results: dict[str, Any]) -> None:
    checked = 0
    for name in BWD:
        c = CASES[name]
        if c["z"].dtype != torch.float64 or not c["finite"]:
            continue
        z = c["z"].clone().requires_grad_()
        logp, ent, kl = ref_forward(z, c["a"], c["ref_z"], True)
        total = torch.zeros((), dtype=torch.float64)
        for g, v in ((c["g_logp"], logp), (c["g_ent"], ent), (c["g_kl"], kl)):
            if g is not None and v is not None:
                total = total + (g * v).sum()
        if not total.requires_grad:
            _close(results[name]["dz"], torch.zeros_like(z), rtol=0, atol=0)
            continue
        (grad,) = torch.autograd.grad(total, z)
        _close(results[name]["dz"], grad, rtol=1e-10, atol=1e-12)
        checked += 1
    assert checked >= 10


LSE = [k for k in CASES if k.startswith("lse-")]


@pytest.mark.parametrize("name", LSE)
def test_grad_block_from_lse_matches_forward_then_backward(
    results: dict[str, Any], name: str
) -> None:
    c = CASES[name]
    dz, ent, kl = results[name]
    _, e_ent, e_kl = ref_forward(c["z"], c["a"], c["ref_z"], True)
    tol = _tol(c["z"].dtype)
    _close(ent, e_ent, **tol)
    if c["ref_z"] is None:
        assert kl is None
    else:
        _close(kl, e_kl, **tol)
    kl_in = e_kl if e_kl is not None else torch.zeros_like(e_ent)
    expect = ref_backward(
        c["z"], c["a"], c["ref_z"], e_ent, kl_in, c["g_logp"], c["g_ent"], c["g_kl"], True
    )
    _close(dz, expect, rtol=tol["rtol"], atol=tol["atol"] * max(1.0, float(expect.abs().max())))


@pytest.mark.parametrize("name", [k for k in CASES if k.startswith("e2e-")])
def test_end_to_end_triton_kernel_matches_torch_kernel(results: dict[str, Any], name: str) -> None:
    r = results[name]
    assert r["calls_torch"] == 0 and r["calls_triton"] > 0, r  # the kernels really ran
    torch_out, triton_out = r["torch"], r["triton"]
    tol = (
        dict(rtol=1e-9, atol=1e-11) if torch_out[0].dtype == torch.float64 else _tol(torch.float32)
    )
    for x, y in zip(triton_out, torch_out, strict=True):
        assert torch.isfinite(x).all()
        _close(x, y, **tol)


# --------------------------------------------------------------------------- input errors


def _bad_calls() -> list[tuple[str, Any, type, str]]:
    def fwd(z: Any, a: Any, ref: Any = None, **kw: Any) -> Any:
        return lambda T: T.forward_block(z, a, ref, True, **kw)

    def bwd(ent: Any, g: Any = None, **kw: Any) -> Any:
        return lambda T: T.backward_block(Z, A, None, ent, ent, g, None, None, True, **kw)

    e = Z[:, 0]
    return [
        ("z-1d", fwd(Z[0], A), ValueError, "z must be a 2-D"),
        ("z-int", fwd(Z.int(), A), TypeError, "z must be float"),
        ("a-shape", fwd(Z, A[:2]), ValueError, r"a must have shape \[3\]"),
        ("a-float", fwd(Z, A.float()), TypeError, "integer actions"),
        ("ref-shape", fwd(Z, A, Z[:, :4]), ValueError, "ref_z must have z's shape"),
        ("empty-vocab", fwd(Z[:, :0], A), ValueError, "non-empty vocabulary"),
        ("block", fwd(Z, A, block=24), ValueError, "power of two"),
        ("ent-shape", bwd(Z[0]), ValueError, r"ent must have shape \[3\]"),
        ("g-shape", bwd(e, e[:2]), ValueError, r"g_logp must have shape \[3\] or \[\]"),
        ("g-int", bwd(e, A), TypeError, "g_logp must be a floating"),
        ("out-shape", bwd(e, out=Z[:, :4]), ValueError, "out must have z's shape"),
        (
            "lse-shape",
            lambda T: T.grad_block_from_lse(Z, A, e[:2], None, None, None, None),
            ValueError,
            r"lse must have shape \[3\]",
        ),
    ]


Z, A = torch.randn(3, 8), torch.zeros(3, dtype=torch.long)


@pytest.mark.parametrize(
    ("call", "exc", "match"), [c[1:] for c in _bad_calls()], ids=[c[0] for c in _bad_calls()]
)
def test_bad_input_is_rejected_with_a_clear_error(call: Any, exc: type, match: str) -> None:
    T = _kernels()
    with pytest.raises(exc, match=match):
        call(T)


def test_empty_block_returns_empty_statistics_without_a_launch() -> None:
    T = _kernels()
    z, a = torch.empty(0, 8), torch.empty(0, dtype=torch.long)
    logp, ent, kl, lse, ref_lse = T.forward_block(z, a, z, True, return_lse=True)
    assert [x.shape for x in (logp, ent, kl, lse, ref_lse)] == [(0,)] * 5
    dz = T.backward_block(z, a, z, ent, kl, ent, ent, ent, True)
    assert dz.shape == (0, 8) and dz.dtype == torch.float32


def test_module_imports_and_reports_unavailable_without_triton(tmp_path: Path) -> None:
    # A child where `import triton` fails, as on an install without the triton extra.
    script = tmp_path / "no_triton.py"
    script.write_text(
        "import sys\n"
        "sys.modules['triton'] = None\n"
        "sys.modules['triton.language'] = None\n"
        "import importlib.util, torch\n"
        f"spec = importlib.util.spec_from_file_location('k', {str(_kernel_path())!r})\n"
        "T = importlib.util.module_from_spec(spec)\n"
        "spec.loader.exec_module(T)\n"
        "assert T.available() is False and T.available('cpu') is False\n"
        "assert T.interpreted() is False\n"
        "try:\n"
        "    T.forward_block(torch.zeros(2, 3), torch.zeros(2, dtype=torch.long), None, True)\n"
        "except ImportError as e:\n"
        "    assert 'haepo[triton]' in str(e), e\n"
        "else:\n"
        "    raise AssertionError('forward_block ran without triton')\n"
        "print('ok')\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    proc = subprocess.run(
        [sys.executable, "-P", str(script)], capture_output=True, text=True, env=env,
        timeout=120, check=False,
    )  # fmt: skip
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr[-2000:]
