"""The ``kernel`` keyword of the lean torch paths: validated, ``"torch"`` and ``"auto"`` (on
CPU: the torch blocks) agree, and ``"triton"`` (the Triton kernels, run by triton's CPU
interpreter here) matches ``"torch"`` on tiny shapes."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

torch = pytest.importorskip("torch")
from haepo_backends.torch import haepo_loss_from_hidden, haepo_loss_from_logits  # noqa: E402


def _data():
    g = torch.Generator().manual_seed(0)
    return dict(
        logits=torch.randn(3, 4, 9, generator=g, dtype=torch.float64),
        hidden=torch.randn(3, 4, 5, generator=g, dtype=torch.float64),
        weight=torch.randn(9, 5, generator=g, dtype=torch.float64),
        actions=torch.randint(0, 9, (3, 4), generator=g),
        returns=torch.tensor([0.0, 1.0, 3.0], dtype=torch.float64),
    )


def _run(entry: str, d: dict, **kw):
    kw = dict(entropy_coef=0.1, chunk_size=5, **kw)
    if entry == "logits":
        x = d["logits"].clone().requires_grad_()
        out = haepo_loss_from_logits(x, d["actions"], d["returns"], ref_logits=d["logits"] * 0.5,
                                     kl_coef=0.2, **kw)  # fmt: skip
    else:
        x = d["hidden"].clone().requires_grad_()
        out = haepo_loss_from_hidden(x, d["weight"], d["actions"], d["returns"],
                                     ref_hidden=d["hidden"] * 0.5, kl_coef=0.2, **kw)  # fmt: skip
    (g,) = torch.autograd.grad(out.loss, x)
    return out, g


@pytest.mark.parametrize("entry", ["logits", "hidden"])
@pytest.mark.parametrize("bad", ["cuda", "TORCH", "", None, 1])
def test_kernel_rejects_unknown_values_naming_it(entry, bad):
    with pytest.raises(ValueError, match=r"^kernel: expected one of 'auto', 'torch', 'triton'"):
        _run(entry, _data(), kernel=bad)


@pytest.mark.parametrize("entry", ["logits", "hidden"])
def test_torch_and_auto_kernels_agree_on_cpu(entry):
    d = _data()
    out_t, g_t = _run(entry, d, kernel="torch")
    out_a, g_a = _run(entry, d, kernel="auto")
    out_d, g_d = _run(entry, d)
    for out, g in ((out_a, g_a), (out_d, g_d)):
        torch.testing.assert_close(out.loss, out_t.loss, rtol=0, atol=0)
        torch.testing.assert_close(g, g_t, rtol=0, atol=0)


@pytest.mark.parametrize("entry", ["logits", "hidden"])
def test_triton_kernel_on_cpu_without_the_interpreter_is_refused_naming_kernel(entry):
    from haepo_backends.torch import _triton

    if _triton.available("cpu"):
        pytest.skip("triton's interpreter is on in this process: kernel='triton' can run")
    with pytest.raises(ValueError, match=r"^kernel: expected the Triton kernels to be runnable"):
        _run(entry, _data(), kernel="triton")


_INTERPRETED = textwrap.dedent(
    """
    import torch
    from haepo_backends.torch import _triton, haepo_loss_from_hidden, haepo_loss_from_logits
    assert _triton.available("cpu"), "interpreter not active"
    g = torch.Generator().manual_seed(0)
    for dt in (torch.float32, torch.float64):
        logits = torch.randn(2, 3, 17, generator=g, dtype=dt)
        logits[0, 1, :4] = -float("inf")
        hidden = torch.randn(2, 3, 6, generator=g, dtype=dt)
        weight = torch.randn(17, 6, generator=g, dtype=dt)
        acts = torch.randint(4, 17, (2, 3), generator=g)
        ret = torch.tensor([0.0, 1.0], dtype=dt)
        mask = torch.tensor([[True, True, False], [True, True, True]])
        res = {}
        for kernel in ("torch", "triton"):
            x = logits.clone().requires_grad_()
            o = haepo_loss_from_logits(x, acts, ret, mask, ref_logits=logits.flip(-1),
                                       entropy_coef=0.1, kl_coef=0.3, chunk_size=2,
                                       kernel=kernel)
            gx, = torch.autograd.grad(o.loss, x)
            h = hidden.clone().requires_grad_()
            w = weight.clone().requires_grad_()
            oh = haepo_loss_from_hidden(h, w, acts, ret, mask, ref_hidden=hidden * 0.3,
                                        entropy_coef=0.1, kl_coef=0.3, chunk_size=2,
                                        kernel=kernel)
            gh, gw = torch.autograd.grad(oh.loss, (h, w))
            res[kernel] = (o.loss, gx, oh.loss, gh, gw, o.stats["entropy"], oh.stats["kl"])
        tol = dict(rtol=1e-4, atol=1e-5) if dt == torch.float32 else dict(rtol=1e-9, atol=1e-10)
        for a, b in zip(res["torch"], res["triton"]):
            torch.testing.assert_close(b, a, **tol)
    print("OK")
    """
)


def test_triton_kernel_matches_torch_under_the_interpreter():
    pytest.importorskip("triton")
    env = dict(os.environ, TRITON_INTERPRET="1")
    proc = subprocess.run(
        [sys.executable, "-P", "-c", _INTERPRETED],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0 and "OK" in proc.stdout, proc.stderr[-4000:]
