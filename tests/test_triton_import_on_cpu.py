"""A CPU call of the lean torch paths never imports triton: the kernels run only on CUDA or
under ``TRITON_INTERPRET=1``, and importing triton alone costs about 90 MiB of RSS."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

pytest.importorskip("torch")

_CALL = """
import sys
import torch
import haepo_backends.torch as hb

torch.manual_seed(0)
M, T, H, V = 4, 3, 8, 11
hidden = torch.randn(M, T, H, requires_grad=True)
weight = torch.randn(V, H, requires_grad=True)
actions = torch.randint(0, V, (M, T))
returns = torch.randn(M)
out = hb.haepo_loss_from_hidden(hidden, weight, actions, returns, entropy_coef=0.01)
out.loss.backward()
logits = torch.randn(M, T, V, requires_grad=True)
hb.haepo_loss_from_logits(logits, actions, returns, entropy_coef=0.01).loss.backward()
print("triton" in sys.modules, "{kernel}")
"""


@pytest.mark.parametrize("kernel", ["auto"])
def test_cpu_lean_calls_leave_triton_unimported(kernel):
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    res = subprocess.run(
        [sys.executable, "-P", "-c", _CALL.format(kernel=kernel)],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )
    assert res.returncode == 0, res.stderr
    assert res.stdout.split() == ["False", kernel]


def test_explicit_triton_kernel_on_cpu_under_the_interpreter_still_runs():
    """``kernel="triton"`` with ``TRITON_INTERPRET=1`` still imports and runs the kernels on
    CPU tensors: only ``"auto"`` skips the import."""
    pytest.importorskip("triton")
    code = (
        "import sys, torch\n"
        "from haepo_backends.torch import _vocab\n"
        "print(_vocab.select_kernel('triton', torch.device('cpu')), "
        "_vocab.select_kernel('auto', torch.device('cpu')), 'triton' in sys.modules)\n"
    )
    res = subprocess.run(
        [sys.executable, "-P", "-c", code],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "TRITON_INTERPRET": "1"},
    )
    assert res.returncode == 0, res.stderr
    assert res.stdout.split() == ["triton", "torch", "True"]
