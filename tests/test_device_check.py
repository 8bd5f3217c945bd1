"""The device check is prepared here: its needs are computed against the GPU machine's package
list, its scripts parse, and its benchmark stages run in smoke mode on CPU."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
BENCH = REPO / "benchmarks"


@pytest.fixture(scope="module")
def device_env():
    pytest.importorskip("packaging")
    spec = importlib.util.spec_from_file_location("_device_env", BENCH / "_device_env.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _fake_wheel(folder: Path, name: str, version: str, requires: list[str]) -> Path:
    dist = f"{name.replace('-', '_')}-{version}"
    path = folder / f"{dist}-py3-none-any.whl"
    meta = ["Metadata-Version: 2.1", f"Name: {name}", f"Version: {version}"]
    meta += [f"Requires-Dist: {r}" for r in requires]
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr(f"{dist}.dist-info/METADATA", "\n".join(meta) + "\n")
    return path


def test_without_carried_wheels_the_missing_packages_are_named(device_env, tmp_path):
    unmet = "\n".join(device_env.problems(tmp_path))
    for name in ("array-api-compat", "liger-kernel", "trl", "datasets"):
        assert name in unmet
    # what the machine has is never asked for
    assert "needs torch" not in unmet and "needs numpy" not in unmet


def test_carried_wheels_and_their_requirements_satisfy_the_check(device_env, tmp_path):
    _fake_wheel(tmp_path, "array-api-compat", "1.16.0", [])
    _fake_wheel(tmp_path, "liger-kernel", "0.8.5", ["torch>=2.1", "triton>=2.3"])
    _fake_wheel(tmp_path, "trl", "1.16.0", ["datasets>=3", "transformers>=4.56"])
    _fake_wheel(tmp_path, "datasets", "5.2.0", ["dill<0.4.2", 'pywin32; sys_platform == "win32"'])
    assert [p for p in device_env.problems(tmp_path) if "dill" not in p] == []
    assert any("dill" in p for p in device_env.problems(tmp_path))
    _fake_wheel(tmp_path, "dill", "0.4.1", [])
    assert device_env.problems(tmp_path) == []


def test_a_version_the_machine_cannot_meet_is_reported(device_env, tmp_path):
    for name, version in (("array-api-compat", "1.16.0"), ("liger-kernel", "0.8.5")):
        _fake_wheel(tmp_path, name, version, [])
    _fake_wheel(tmp_path, "datasets", "5.2.0", [])
    _fake_wheel(tmp_path, "trl", "1.16.0", ["transformers>=99"])
    found = device_env.problems(tmp_path)
    assert any(
        "transformers>=99" in p and "the machine has transformers 5.17.0" in p for p in found
    )


def test_device_scripts_parse():
    for script in ("device_check.sh", "device_wheels.sh"):
        subprocess.run(["bash", "-n", str(BENCH / script)], check=True)


@pytest.mark.parametrize("script", ["bench_device.py", "bench_trl_step.py"])
def test_device_benchmarks_run_in_smoke_mode_on_cpu(script, tmp_path):
    pytest.importorskip("torch")
    if script == "bench_trl_step.py":
        pytest.importorskip("trl")
    out = tmp_path / "out.json"
    res = subprocess.run(
        [sys.executable, "-P", str(BENCH / script), "--smoke", "--json", str(out)],
        capture_output=True,
        text=True,
        timeout=600,
        env={
            "HF_HUB_OFFLINE": "1",
            "MPLBACKEND": "Agg",
            "PATH": "/usr/bin:/bin",
            **{k: v for k, v in __import__("os").environ.items() if k.startswith("PYTHON")},
        },
    )
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-3000:]
    assert out.exists() and out.stat().st_size > 0
    assert "| naive |" in res.stdout or "| HAEPO |" in res.stdout
