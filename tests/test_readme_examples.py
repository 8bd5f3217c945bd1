"""Every Python block of README.md runs as written (so the examples cannot rot)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"
BLOCKS = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)


def test_readme_has_numpy_torch_and_jax_examples():
    joined = "\n".join(BLOCKS)
    assert len(BLOCKS) >= 3
    for lib in ("numpy", "torch", "jax"):
        assert f"import {lib}" in joined


def test_readme_has_exactly_two_commands():
    commands = re.findall(r"```bash\n(.*?)```", README.read_text(), flags=re.S)
    lines = [ln for block in commands for ln in block.splitlines() if ln.strip()]
    assert lines == [
        "bash scripts/train.sh    # the main job: train HAEPO on CartPole-v1 (CPU, ~3 min), curve + CSV in runs/",  # noqa: E501
        "bash scripts/test.sh     # the tests: ruff, the conformance suite on every backend, pytest",  # noqa: E501
    ]
    ci = (README.parent / ".ci" / "run").read_text()
    assert "scripts/test.sh" in ci


@pytest.mark.parametrize("index", range(len(BLOCKS)))
def test_readme_block_runs(index):
    code = BLOCKS[index]
    for lib in ("torch", "jax"):
        if f"import {lib}" in code:
            pytest.importorskip(lib)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip(), "each example prints its result"
