"""The documentation site builds with warnings as errors and documents the public API."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_docs_site_builds_strictly_and_documents_the_api(tmp_path: Path) -> None:
    pytest.importorskip("mkdocs")
    pytest.importorskip("mkdocstrings_handlers.python")
    site = tmp_path / "site"
    proc = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "-q", "-d", str(site)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-6000:]
    torch_api = (site / "api" / "torch" / "index.html").read_text()
    assert 'id="haepo_backends.torch.haepo_loss_from_hidden"' in torch_api
    core_api = (site / "api" / "core" / "index.html").read_text()
    assert 'id="haepo_core.haepo_loss"' in core_api
    shutil.rmtree(site)
