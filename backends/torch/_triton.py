"""Triton kernels for the vocabulary pass: per-row log-softmax statistics and the closed-form
logits gradient, one program per row, one or two sweeps over the vocabulary.

Same values as the torch ``[chunk, V]`` blocks of ``_vocab.py`` (``_forward_block`` and
``_backward_block``), with ``l = log p``, ``l' = log p_ref`` per row:

    logp_a = z_a - lse,   H = -sum_v p l,   KL = sum_v p (l - l') = -H - sum_v p l'
    dz     = g_logp*onehot(a) - p * (alpha + beta*l + g_kl*l'),
    alpha  = g_logp + g_ent*H + g_kl*KL,   beta = g_ent - g_kl

Why kernels: the torch blocks launch about ten kernels per chunk, each a full pass over a
float32 ``[chunk, V]`` block, and keep three or four such blocks alive. Here a row is read once
in the forward and twice in the backward (normalizers, then the gradient), or once when the
forward's row log-sum-exps are handed back; nothing of size ``V`` is written but the gradient
itself, which may overwrite the logits block (``out=z``).

Tricks, each pinned to the torch blocks by ``tests/test_torch_triton.py``:

- Online max / sum-exp over vocabulary tiles (the running sum is rescaled when the running max
  grows), so one read of the row gives the log-sum-exp; the entropy and the reference
  cross-term ride along as running sums ``sum e^(z-m) (z-m)`` and ``sum e^(z-m) (z'-m')``,
  rescaled the same way, so the forward needs no second read.
- Masked vocabulary (``-inf`` logits): ``-inf - m`` and ``e * (-inf)`` would give NaN, so the
  shifted logits of masked entries are selected to 0 (their weight ``e`` is exactly 0), and a
  running max that is still ``-inf`` (every entry seen so far masked) is replaced by 0 as the
  shift. Where the reference is masked but the policy is not, ``_vocab.py`` floors ``log p_ref``
  at -1e4 (``_LOG_FLOOR``); that floor applies to the log-softmax, known only after a full
  read, so with ``finite=False`` and a reference the forward takes a second sweep for the KL.
- Statistics accumulate in float32 for float32 / bfloat16 / float16 logits and in float64 for
  float64 logits; only the loads and the gradient store use the logits' (output's) dtype.

The kernels are built when this module is imported: under ``TRITON_INTERPRET=1`` (set before
the import) triton's interpreter runs them on CPU tensors, which is how they are tested
without a GPU.
"""

from __future__ import annotations

import torch

try:  # an optional extra: haepo[triton]
    import triton
    import triton.language as tl
except ImportError:  # pragma: no cover - exercised where triton is absent
    triton = None
    tl = None

__all__ = ["available", "backward_block", "forward_block", "grad_block_from_lse", "interpreted"]

# Same floor as _vocab._LOG_FLOOR: exp(-1e4) == 0 in float32 and float64, so floored terms
# weigh exactly 0 while products with them stay finite.
_LOG_FLOOR = -1e4
_SUPPORTED = (torch.float32, torch.float64, torch.bfloat16, torch.float16)


def interpreted() -> bool:
    """True when the kernels were built for triton's CPU interpreter (``TRITON_INTERPRET=1``
    at import time)."""
    if triton is None:
        return False
    from triton.runtime.interpreter import InterpretedFunction

    return isinstance(_fwd_kernel, InterpretedFunction)


def available(device: torch.device | str | None = None) -> bool:
    """Whether the kernels can run on ``device`` (default: the current CUDA device): triton is
    importable and either the device is CUDA or the kernels run under the interpreter."""
    if triton is None:
        return False
    if interpreted():
        return True
    if device is None:
        return torch.cuda.is_available()
    return torch.device(device).type == "cuda" and torch.cuda.is_available()


if triton is not None:
    # A global read inside a kernel must be a compile-time constant.
    _FLOOR = tl.constexpr(_LOG_FLOOR)

    @triton.jit
    def _online_step(x, m, s):  # pragma: no cover - traced by triton
        """One tile of the online log-sum-exp: new max, rescale factor, shift used for this
        tile, weights e = exp(x - shift), and the updated sum. A max that is still -inf (all
        entries so far masked) is shifted by 0 instead: -inf - -inf would be NaN."""
        m_new = tl.maximum(m, tl.max(x, axis=0))
        shift = tl.where(m_new == float("-inf"), 0.0, m_new)
        scale = tl.exp(m - shift)  # 0 while m is -inf: the (empty) old sum drops out
        # The old running sums were relative to m; moving them to the new shift adds
        # (m - shift) times the old weight. The -inf case carries zero weight: select 0.
        dm = tl.where(m == float("-inf"), 0.0, m - shift)
        e = tl.exp(x - shift)
        return m_new, shift, scale, dm, e, s * scale + tl.sum(e, axis=0)

    @triton.jit
    def _fwd_kernel(  # pragma: no cover - traced by triton
        z_ptr, z_stride, r_ptr, r_stride, a_ptr, logp_ptr, ent_ptr, kl_ptr, lse_ptr, lser_ptr, V,
        HAS_REF: tl.constexpr, KL_SWEEP: tl.constexpr, STORE_LSE: tl.constexpr, ACC: tl.constexpr,
        BLOCK: tl.constexpr,
    ):  # fmt: skip
        row = tl.program_id(0).to(tl.int64)  # int64: row * stride may pass 2**31
        z_row = z_ptr + row * z_stride
        r_row = r_ptr + row * r_stride
        offs = tl.arange(0, BLOCK)
        zero = tl.sum(tl.zeros([BLOCK], ACC), axis=0)  # a typed scalar 0 (loop-carried)
        m = zero + float("-inf")
        s = zero
        t = zero  # sum e^(z-m) (z-m): the entropy, H = log s - t/s
        mr = zero + float("-inf")
        sr = zero
        c = zero  # sum e^(z-m) (z'-m'): the cross-term, sum p l' = c/s - log s'
        for start in range(0, V, BLOCK):
            cols = start + offs
            mask = cols < V
            # Out-of-row lanes load as -inf: the same path as masked vocabulary.
            x = tl.load(z_row + cols, mask=mask, other=float("-inf")).to(ACC)
            m_new, shift, scale, dm, e, s_new = _online_step(x, m, s)
            xc = tl.where(x == float("-inf"), 0.0, x - shift)
            t = (t + dm * s) * scale + tl.sum(e * xc, axis=0)
            if HAS_REF:
                y = tl.load(r_row + cols, mask=mask, other=float("-inf")).to(ACC)
                mr_new, shift_r, _scale_r, dmr, _er, sr = _online_step(y, mr, sr)
                if not KL_SWEEP:
                    yc = tl.where(y == float("-inf"), 0.0, y - shift_r)
                    c = (c + dmr * s) * scale + tl.sum(e * yc, axis=0)
                mr = mr_new
            m = m_new
            s = s_new
        log_s = tl.log(s)
        lse = m + log_s
        ent = log_s - t / s
        a = tl.load(a_ptr + row)
        ok = (a >= 0) & (a < V)  # never read outside the row (the caller validates actions)
        z_a = tl.load(z_row + a, mask=ok, other=float("nan")).to(ACC)
        tl.store(logp_ptr + row, z_a - lse)  # before any floor: the true log-prob
        if STORE_LSE:
            tl.store(lse_ptr + row, lse)
        if HAS_REF:
            lse_r = mr + tl.log(sr)
            if STORE_LSE:
                tl.store(lser_ptr + row, lse_r)
            if KL_SWEEP:
                # Second sweep with both normalizers known: sum p * max(l', floor) and the
                # entropy as -sum p * max(l, floor), exactly the torch block's formulas.
                h = zero
                cross = zero
                for start in range(0, V, BLOCK):
                    cols = start + offs
                    mask = cols < V
                    x = tl.load(z_row + cols, mask=mask, other=float("-inf")).to(ACC)
                    y = tl.load(r_row + cols, mask=mask, other=float("-inf")).to(ACC)
                    p = tl.exp(x - lse)
                    h -= tl.sum(p * tl.maximum(x - lse, _FLOOR), axis=0)
                    cross += tl.sum(p * tl.maximum(y - lse_r, _FLOOR), axis=0)
                ent = h
            else:
                cross = c / s - tl.log(sr)
            tl.store(kl_ptr + row, -ent - cross)
        tl.store(ent_ptr + row, ent)

    @triton.jit
    def _bwd_kernel(  # pragma: no cover - traced by triton
        z_ptr, z_stride, r_ptr, r_stride, a_ptr, lse_ptr, lser_ptr, ent_ptr, kl_ptr, gl_ptr,
        gl_stride, ge_ptr, ge_stride, gk_ptr, gk_stride, out_ptr, out_stride, V,
        HAS_GL: tl.constexpr, HAS_GE: tl.constexpr, USE_KL: tl.constexpr, HAS_REF: tl.constexpr,
        LSE_GIVEN: tl.constexpr, REF_LSE_GIVEN: tl.constexpr, STATS: tl.constexpr,
        SWEEP_Z: tl.constexpr, SWEEP_R: tl.constexpr, FLOOR_REF: tl.constexpr, ACC: tl.constexpr,
        BLOCK: tl.constexpr,
    ):  # fmt: skip
        """HAS_REF: the reference row is read (for the KL term or, with STATS, its value).
        LSE_GIVEN / REF_LSE_GIVEN: the row log-sum-exps come from the forward, so sweep 1
        skips them; with both given (or no reference needed) and no STATS, sweep 1 vanishes
        and the gradient is one read of the row. STATS (needs LSE_GIVEN, not REF_LSE_GIVEN):
        sweep 1 also computes the entropy and the KL and stores them (the from-hidden pass 2,
        whose forward never ran over the full vocabulary with these values). SWEEP_Z / SWEEP_R
        (set by the launcher): sweep 1 reads the policy / reference row."""
        row = tl.program_id(0).to(tl.int64)
        z_row = z_ptr + row * z_stride
        r_row = r_ptr + row * r_stride
        o_row = out_ptr + row * out_stride
        offs = tl.arange(0, BLOCK)
        zero = tl.sum(tl.zeros([BLOCK], ACC), axis=0)
        m = zero + float("-inf")
        s = zero
        mr = zero + float("-inf")
        sr = zero
        h = zero  # STATS: -sum p l
        c = zero  # STATS: sum p (z' - m'), rescaled as m' grows
        psum = zero
        if LSE_GIVEN:
            lse = tl.load(lse_ptr + row).to(ACC)
        if REF_LSE_GIVEN:
            lse_r = tl.load(lser_ptr + row).to(ACC)
        if SWEEP_Z or SWEEP_R:
            # Sweep 1: the normalizers not given (and, with STATS, the entropy and the KL,
            # which the gradient's alpha needs before sweep 2).
            for start in range(0, V, BLOCK):
                cols = start + offs
                mask = cols < V
                if SWEEP_Z:
                    x = tl.load(z_row + cols, mask=mask, other=float("-inf")).to(ACC)
                    if STATS:
                        p = tl.exp(x - lse)
                        h -= tl.sum(p * tl.maximum(x - lse, _FLOOR), axis=0)
                    else:
                        m, _shift, _scale, _dm, _e, s = _online_step(x, m, s)
                if SWEEP_R:
                    y = tl.load(r_row + cols, mask=mask, other=float("-inf")).to(ACC)
                    mr_new, shift_r, _scale_r, dmr, _er, sr = _online_step(y, mr, sr)
                    if STATS:
                        yc = tl.where(y == float("-inf"), 0.0, y - shift_r)
                        c = c + dmr * psum + tl.sum(p * yc, axis=0)
                        psum += tl.sum(p, axis=0)
                    mr = mr_new
        if not LSE_GIVEN:
            lse = m + tl.log(s)
        if SWEEP_R:
            lse_r = mr + tl.log(sr)
        if STATS:
            ent = h
            tl.store(ent_ptr + row, ent)
            if HAS_REF:
                kl = -ent - (c - (lse_r - mr) * psum)
                tl.store(kl_ptr + row, kl)
        else:
            ent = tl.load(ent_ptr + row).to(ACC)
            if USE_KL:
                kl = tl.load(kl_ptr + row).to(ACC)
        gl = zero
        ge = zero
        gk = zero
        if HAS_GL:
            gl = tl.load(gl_ptr + row * gl_stride).to(ACC)
        if HAS_GE:
            ge = tl.load(ge_ptr + row * ge_stride).to(ACC)
        alpha = gl + ge * ent
        beta = ge
        if USE_KL:
            gk = tl.load(gk_ptr + row * gk_stride).to(ACC)
            alpha += gk * kl
            beta -= gk
        a = tl.load(a_ptr + row)
        # Sweep 2: the gradient, tile by tile, stored over the tile it was computed from when
        # out aliases z (each tile is loaded before it is overwritten, by this program only).
        for start in range(0, V, BLOCK):
            cols = start + offs
            mask = cols < V
            x = tl.load(z_row + cols, mask=mask, other=float("-inf")).to(ACC)
            # Flooring log p changes no product: where l < -1e4, p = exp(l) is exactly 0.
            lp = tl.maximum(x - lse, _FLOOR)
            p = tl.exp(x - lse)
            u = alpha + beta * lp
            if USE_KL:
                # Lanes past the row load 0, not -inf: their p is 0 and the product stays finite.
                y = tl.load(r_row + cols, mask=mask, other=0.0).to(ACC)
                lr = y - lse_r
                if FLOOR_REF:
                    lr = tl.maximum(lr, _FLOOR)
                u += gk * lr
            dz = -p * u
            if HAS_GL:
                dz = tl.where(cols == a, dz + gl, dz)
            tl.store(o_row + cols, dz.to(out_ptr.dtype.element_ty), mask=mask)

else:  # pragma: no cover
    _fwd_kernel = _bwd_kernel = None


# --------------------------------------------------------------------------- launch wrappers


def _acc_dtype(dt: torch.dtype) -> torch.dtype:
    return torch.float64 if dt == torch.float64 else torch.float32


def _tl_acc(dt: torch.dtype) -> object:  # a triton dtype
    return tl.float64 if dt == torch.float64 else tl.float32


def _block(vocab: int, dt: torch.dtype, block: int | None) -> int:
    """Tile width: a power of two. On the GPU 4096 float32 lanes (2048 float64) keep a tile and
    its temporaries in registers at 8 warps; the interpreter runs a tile as numpy arrays, so
    there one tile covers the whole row (fewer Python-level iterations)."""
    if block is not None:
        if block < 16 or block & (block - 1):
            raise ValueError(f"block must be a power of two >= 16, got {block}")
        return block
    cap = 1 << 16 if interpreted() else (2048 if dt == torch.float64 else 4096)
    return max(16, min(cap, triton.next_power_of_2(max(vocab, 1))))


def _warps(block: int) -> int:
    return 4 if block <= 1024 else 8


def _need_triton() -> None:
    if triton is None:
        raise ImportError("the triton kernels need triton: pip install 'haepo[triton]'")


def _rows(x: torch.Tensor) -> torch.Tensor:
    """Unit stride along the vocabulary (row stride is passed to the kernel, so row slices of
    a larger block need no copy)."""
    return x if x.stride(1) == 1 else x.contiguous()


def _check_block(z: torch.Tensor, a: torch.Tensor, ref_z: torch.Tensor | None) -> None:
    if not isinstance(z, torch.Tensor) or z.ndim != 2:
        raise ValueError(f"z must be a 2-D [n, V] tensor, got {getattr(z, 'shape', type(z))}")
    if z.dtype not in _SUPPORTED:
        raise TypeError(f"z must be float32, float64, bfloat16 or float16, got {z.dtype}")
    if z.shape[1] == 0:
        raise ValueError(f"z must have a non-empty vocabulary, got shape {tuple(z.shape)}")
    if not isinstance(a, torch.Tensor) or a.shape != (z.shape[0],):
        raise ValueError(f"a must have shape [{z.shape[0]}], got {getattr(a, 'shape', type(a))}")
    if a.dtype.is_floating_point or a.dtype.is_complex or a.dtype == torch.bool:
        raise TypeError(f"a must hold integer actions, got {a.dtype}")
    if a.device != z.device:
        raise ValueError(f"a must be on z's device {z.device}, got {a.device}")
    if ref_z is not None:
        if not isinstance(ref_z, torch.Tensor) or ref_z.shape != z.shape:
            got = getattr(ref_z, "shape", type(ref_z))
            raise ValueError(f"ref_z must have z's shape {tuple(z.shape)}, got {got}")
        if ref_z.dtype not in _SUPPORTED:
            raise TypeError(f"ref_z must be a floating tensor, got {ref_z.dtype}")
        if ref_z.device != z.device:
            raise ValueError(f"ref_z must be on z's device {z.device}, got {ref_z.device}")


def _row_vector(name: str, g: torch.Tensor, n: int, acc: torch.dtype) -> torch.Tensor:
    """``[n]`` or 0-d (one value for every row) -> an ``[n]`` view, stride 0 when broadcast."""
    if not isinstance(g, torch.Tensor) or g.shape not in ((n,), ()):
        raise ValueError(f"{name} must have shape [{n}] or [], got {getattr(g, 'shape', g)}")
    if not g.dtype.is_floating_point:
        raise TypeError(f"{name} must be a floating tensor, got {g.dtype}")
    return g.to(acc).expand(n)


def forward_block(
    z: torch.Tensor, a: torch.Tensor, ref_z: torch.Tensor | None, finite: bool, *,
    return_lse: bool = False, block: int | None = None,
) -> tuple[torch.Tensor | None, ...]:  # fmt: skip
    """``(logp_a, entropy, kl | None)``, each ``[n]``, for the rows of the logits block
    ``z [n, V]`` (actions ``a [n]``, reference logits ``ref_z [n, V]`` or None).

    The values of ``_vocab._forward_block``; returned in float64 for float64 logits, else in
    float32. ``finite=False`` when ``-inf`` may occur (masked vocabulary; costs a second sweep
    for the KL only). ``return_lse=True`` appends the row log-sum-exps ``(lse, ref_lse |
    None)``: given back to :func:`backward_block`, they make the backward one sweep instead of
    two. ``block`` forces the tile width (a power of two, for tests)."""
    _need_triton()
    _check_block(z, a, ref_z)
    n, vocab = z.shape
    acc = _acc_dtype(z.dtype)
    new = lambda: torch.empty(n, dtype=acc, device=z.device)
    logp, ent = new(), new()
    kl = new() if ref_z is not None else None
    lse = new() if return_lse else None
    ref_lse = new() if return_lse and ref_z is not None else None
    if n > 0:
        z, a = _rows(z), a.contiguous()
        r = z if ref_z is None else _rows(ref_z)
        bl = _block(vocab, z.dtype, block)
        _fwd_kernel[(n,)](
            z, z.stride(0), r, r.stride(0), a, logp, ent, ent if kl is None else kl,
            ent if lse is None else lse, ent if ref_lse is None else ref_lse, vocab,
            HAS_REF=ref_z is not None, KL_SWEEP=not finite, STORE_LSE=return_lse,
            ACC=_tl_acc(z.dtype), BLOCK=bl, num_warps=_warps(bl),
        )  # fmt: skip
    return (logp, ent, kl, lse, ref_lse) if return_lse else (logp, ent, kl)


def _launch_backward(
    z: torch.Tensor, a: torch.Tensor, ref_z: torch.Tensor | None, lse: torch.Tensor | None,
    ref_lse: torch.Tensor | None, stats: bool, ent: torch.Tensor, kl: torch.Tensor,
    g_logp: torch.Tensor | None, g_ent: torch.Tensor | None, g_kl: torch.Tensor | None,
    finite: bool, out: torch.Tensor | None, block: int | None,
) -> torch.Tensor:  # fmt: skip
    n, vocab = z.shape
    acc = _acc_dtype(z.dtype)
    if out is None:
        out = torch.empty_like(z, memory_format=torch.contiguous_format)
    elif not isinstance(out, torch.Tensor) or out.shape != z.shape:
        got = getattr(out, "shape", type(out))
        raise ValueError(f"out must have z's shape {tuple(z.shape)}, got {got}")
    elif out.dtype not in _SUPPORTED or out.device != z.device:
        raise TypeError(
            f"out must be a floating tensor on {z.device}, got {out.dtype} on {out.device}"
        )
    if n == 0:
        return out
    use_kl = g_kl is not None and ref_z is not None
    has_ref = ref_z is not None and (use_kl or stats)
    gl = None if g_logp is None else _row_vector("g_logp", g_logp, n, acc)
    ge = None if g_ent is None else _row_vector("g_ent", g_ent, n, acc)
    gk = None if not use_kl else _row_vector("g_kl", g_kl, n, acc)  # type: ignore[arg-type]
    z, a = _rows(z), a.contiguous()
    r = _rows(ref_z) if has_ref else z  # type: ignore[arg-type]
    # A gradient buffer without unit stride along V is filled through a contiguous copy.
    target = out
    if out.stride(1) != 1:
        target = torch.empty_like(out, memory_format=torch.contiguous_format)
    dummy = ent
    ref_given = has_ref and ref_lse is not None
    bl = _block(vocab, z.dtype, block)
    _bwd_kernel[(n,)](
        z, z.stride(0), r, r.stride(0), a, dummy if lse is None else lse,
        dummy if ref_lse is None or not has_ref else ref_lse, ent, kl,
        dummy if gl is None else gl, 0 if gl is None else gl.stride(0),
        dummy if ge is None else ge, 0 if ge is None else ge.stride(0),
        dummy if gk is None else gk, 0 if gk is None else gk.stride(0),
        target, target.stride(0), vocab,
        HAS_GL=gl is not None, HAS_GE=ge is not None, USE_KL=use_kl, HAS_REF=has_ref,
        LSE_GIVEN=lse is not None, REF_LSE_GIVEN=ref_given, STATS=stats,
        SWEEP_Z=stats or lse is None, SWEEP_R=has_ref and not ref_given,
        FLOOR_REF=not finite, ACC=_tl_acc(z.dtype), BLOCK=bl, num_warps=_warps(bl),
    )  # fmt: skip
    if target is not out:
        out.copy_(target)
    return out


def _stats_vector(name: str, x: torch.Tensor, n: int, acc: torch.dtype) -> torch.Tensor:
    """A checked per-row statistic ``[n]`` in the accumulation dtype, contiguous."""
    if not isinstance(x, torch.Tensor) or x.shape != (n,):
        raise ValueError(f"{name} must have shape [{n}], got {getattr(x, 'shape', type(x))}")
    if not x.dtype.is_floating_point:
        raise TypeError(f"{name} must be a floating tensor, got {x.dtype}")
    return x.to(acc).contiguous()


def backward_block(
    z: torch.Tensor, a: torch.Tensor, ref_z: torch.Tensor | None, ent: torch.Tensor,
    kl: torch.Tensor, g_logp: torch.Tensor | None, g_ent: torch.Tensor | None,
    g_kl: torch.Tensor | None, finite: bool, out: torch.Tensor | None = None, *,
    lse: torch.Tensor | None = None, ref_lse: torch.Tensor | None = None, block: int | None = None,
) -> torch.Tensor:  # fmt: skip
    """``d(sum g_logp*logp_a + g_ent*H + g_kl*KL)/dz`` for the block ``z [n, V]``: the value
    of ``_vocab._backward_block``. ``ent``/``kl`` ``[n]`` are the forward's statistics
    (``kl`` is read only when ``g_kl`` and ``ref_z`` are given); each ``g_*`` is ``[n]``, 0-d
    or None (= 0). Written into ``out`` (any floating dtype, shape of ``z``; it may be ``z``
    itself) when given, else into a new tensor of ``z``'s dtype.

    Two sweeps over each row (normalizers, then the gradient); one when the forward's row
    log-sum-exps are passed back as ``lse`` (and ``ref_lse`` when the KL term is used), see
    ``forward_block(..., return_lse=True)``."""
    _need_triton()
    _check_block(z, a, ref_z)
    n, acc = z.shape[0], _acc_dtype(z.dtype)
    ent = _stats_vector("ent", ent, n, acc)
    use_kl = g_kl is not None and ref_z is not None
    kl = _stats_vector("kl", kl, n, acc) if use_kl else ent  # else not read
    if lse is not None:
        lse = _stats_vector("lse", lse, n, acc)
    if ref_lse is not None:
        ref_lse = _stats_vector("ref_lse", ref_lse, n, acc)
    return _launch_backward(
        z, a, ref_z, lse, ref_lse, False, ent, kl, g_logp, g_ent, g_kl, finite, out, block
    )


def grad_block_from_lse(
    z: torch.Tensor, a: torch.Tensor, lse: torch.Tensor, ref_z: torch.Tensor | None,
    g_logp: torch.Tensor | None, g_ent: torch.Tensor | None, g_kl: torch.Tensor | None,
    out: torch.Tensor | None = None, *, block: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:  # fmt: skip
    """Pass 2 of the from-hidden path for one projected chunk: ``(dz, entropy, kl | None)``.

    ``z [n, V]`` are the chunk's (finite) policy logits, ``lse [n]`` their row log-sum-exp
    from pass 1 and ``ref_z`` the reference logits or None. Sweep 1 computes the entropy and
    the exact KL (the reference normalizer online); sweep 2 writes ``dz`` as
    :func:`backward_block` does, with ``g_kl`` applied only when ``ref_z`` is given. Two
    sweeps where a forward block followed by a backward block would take three."""
    _need_triton()
    _check_block(z, a, ref_z)
    n, acc = z.shape[0], _acc_dtype(z.dtype)
    lse = _stats_vector("lse", lse, n, acc)
    ent = torch.empty(n, dtype=acc, device=z.device)
    kl = torch.empty(n, dtype=acc, device=z.device) if ref_z is not None else None
    dz = _launch_backward(
        z, a, ref_z, lse, None, True, ent, ent if kl is None else kl,
        g_logp, g_ent, g_kl, True, out, block,
    )  # fmt: skip
    return dz, ent, kl
