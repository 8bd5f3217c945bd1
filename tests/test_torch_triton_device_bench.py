"""The device benchmark script runs end to end at its tiny ``--smoke`` size on CPU."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("torch")
ROOT = Path(__file__).resolve().parents[1]


def test_bench_device_smoke_reports_times_for_every_runnable_variant(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    env = dict(os.environ, OMP_NUM_THREADS="1")
    env.pop("TRITON_INTERPRET", None)
    proc = subprocess.run(
        [sys.executable, "-P", str(ROOT / "benchmarks" / "bench_device.py"), "--smoke",
         "--device", "cpu", "--dtypes", "fp32", "--repeats", "1", "--json", str(out)],
        capture_output=True, text=True, timeout=300, env=env, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    data = json.loads(out.read_text())
    assert data["not_run"] == []
    keys = sorted(data["results"])
    assert [k.split()[0] for k in keys] == ["hidden", "logits"]
    for key in keys:
        res = data["results"][key]
        assert {"naive", "haepo"} <= set(res["time"]), (key, res)
        assert all(math.isfinite(t) and t > 0 for t in res["time"].values())
        # Every variant is either timed or skipped with a reason, never silently dropped.
        expected = {"naive", "haepo", "haepo_triton"} | (
            {"liger"} if key.startswith("hidden") else {"liger_triton"}
        )
        assert set(res["time"]) | set(res["skipped"]) == expected
        assert all(isinstance(why, str) and why for why in res["skipped"].values())
    assert "| naive |" in proc.stdout and "/ naive" in proc.stdout


def test_bench_device_rejects_bad_repeats() -> None:
    proc = subprocess.run(
        [sys.executable, "-P", str(ROOT / "benchmarks" / "bench_device.py"), "--repeats", "0"],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert proc.returncode == 2
    assert "--repeats must be >= 1, got 0" in proc.stderr
