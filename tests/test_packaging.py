"""Packaging: the wheel holds haepo_core, haepo_backends, haepo_adapters, haepo_conformance (with
``py.typed`` and the golden vectors) and no bare ``backends``/``adapters``/``conformance``
package; and a pytest run from the repo root never imports the folders by their bare names."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGES = {
    "haepo_core": "haepo_core",
    "haepo_backends": "backends",
    "haepo_adapters": "adapters",
    "haepo_conformance": "conformance",
}
BARE = ("backends", "adapters", "conformance")


@pytest.fixture(scope="module")
def wheel_names(tmp_path_factory) -> list[str]:
    """Build a wheel from a copy of the source tree (so the shared tree gets no build/ or
    egg-info) without network or build isolation, and list its files."""
    tmp = tmp_path_factory.mktemp("wheel")
    src = tmp / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md", "LICENSE", "MANIFEST.in", "setup.cfg"):
        if (REPO / name).exists():
            shutil.copy2(REPO / name, src / name)
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info")
    for folder in PACKAGES.values():
        shutil.copytree(REPO / folder, src / folder, ignore=ignore)
    dist = tmp / "dist"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "--no-index",
            "-q",
            "-w",
            str(dist),
            str(src),
        ],
        check=True,
        capture_output=True,
        text=True,
        timeout=300,
    )
    wheels = list(dist.glob("haepo-*.whl"))
    assert len(wheels) == 1, wheels
    with zipfile.ZipFile(wheels[0]) as zf:
        return zf.namelist()


def test_wheel_contains_the_four_prefixed_packages_and_py_typed(wheel_names):
    for pkg, folder in PACKAGES.items():
        assert f"{pkg}/__init__.py" in wheel_names, pkg
        # every module of the folder is shipped under its import name
        for py in (REPO / folder).rglob("*.py"):
            rel = py.relative_to(REPO / folder).as_posix()
            if "__pycache__" not in rel:
                assert f"{pkg}/{rel}" in wheel_names, f"{pkg}/{rel}"
    assert "haepo_core/py.typed" in wheel_names
    vectors = [n for n in wheel_names if n.startswith("haepo_conformance/vectors/")]
    assert len(vectors) == len(list((REPO / "conformance" / "vectors").glob("*.json")))


def test_wheel_has_no_bare_backends_adapters_or_conformance_package(wheel_names):
    tops = {n.split("/")[0] for n in wheel_names}
    for bare in BARE:
        assert bare not in tops, f"bare package {bare!r} in the wheel"
    allowed = set(PACKAGES) | {n for n in tops if n.endswith((".dist-info", ".data"))}
    assert tops <= allowed, tops - allowed


_INNER_TEST = """
import importlib.util, json, os, sys
from pathlib import Path

REPO = Path({repo!r})


def test_bare_names_are_not_the_repo_folders():
    import haepo_adapters, haepo_backends, haepo_conformance, haepo_core
    report = {{
        "sys_path_has_repo": any(Path(p or os.getcwd()).resolve() == REPO for p in sys.path),
        "bare_in_sys_modules": [b for b in ("backends", "adapters", "conformance")
                                if b in sys.modules],
        "bare_importable_from_repo": [],
        "files": {{m.__name__: m.__file__ for m in (haepo_backends, haepo_adapters,
                                                  haepo_conformance, haepo_core)}},
        "repo_modules_by_bare_name": sorted(
            name for name, mod in list(sys.modules.items())
            if getattr(mod, "__file__", None)
            and any(Path(mod.__file__).resolve().is_relative_to(REPO / f)
                    for f in ("backends", "adapters", "conformance"))
            and not name.startswith("haepo_")
        ),
    }}
    for bare in ("backends", "adapters", "conformance"):
        spec = importlib.util.find_spec(bare)
        if spec is not None and spec.origin and Path(spec.origin).resolve().is_relative_to(REPO):
            report["bare_importable_from_repo"].append(bare)
    Path(os.environ["HAEPO_PACKAGING_REPORT"]).write_text(json.dumps(report))
"""


@pytest.mark.parametrize("launcher", ["pytest-script", "python-m-pytest"])
def test_pytest_run_from_repo_root_never_imports_bare_folder_names(tmp_path, launcher):
    """Run pytest (importlib mode from pyproject) from the repo root on a small test: the
    prefixed packages resolve into the repo folders through the package-dir mapping and no
    module is imported under a bare folder name. With the ``pytest`` console script the bare
    names are not even importable; ``python -m pytest`` puts the working directory on
    ``sys.path`` (a Python rule), so there they would be importable, yet nothing imports them
    (``python -P -m pytest`` avoids even that)."""
    test_file = tmp_path / "test_inner_packaging.py"
    test_file.write_text(_INNER_TEST.format(repo=str(REPO)))
    report = tmp_path / "report.json"
    script = Path(sys.executable).with_name("pytest")
    if launcher == "pytest-script":
        if not script.exists():
            pytest.skip("no pytest console script next to the interpreter")
        cmd = [str(script)]
    else:
        cmd = [sys.executable, "-m", "pytest"]
    res = subprocess.run(
        [*cmd, "-q", "--rootdir", str(REPO), "-c", str(REPO / "pyproject.toml"), str(test_file)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "HAEPO_PACKAGING_REPORT": str(report)},
    )
    assert res.returncode == 0, res.stdout + res.stderr
    data = json.loads(report.read_text())
    assert data["bare_in_sys_modules"] == []
    assert data["repo_modules_by_bare_name"] == []
    if launcher == "pytest-script":
        assert data["bare_importable_from_repo"] == []
        assert not data["sys_path_has_repo"]
    for pkg, folder in PACKAGES.items():
        assert Path(data["files"][pkg]).resolve().parent == REPO / folder, data["files"][pkg]


def test_this_pytest_process_imported_no_bare_folder_name():
    """In the running test session itself, nothing was imported by a bare folder name."""
    assert [b for b in BARE if b in sys.modules] == []
    for name, mod in list(sys.modules.items()):
        path = getattr(mod, "__file__", None)
        if path and not name.startswith("haepo_"):
            resolved = Path(path).resolve()
            assert not any(resolved.is_relative_to(REPO / f) for f in BARE), (name, path)


def test_extras_declare_ranges_never_exact_pins():
    """A library user's ``pip install haepo[torch]`` must never replace their own torch: every
    extra gives a range, and the project's own CPU pin lives in scripts/constraints.txt."""
    import tomllib

    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    pinned = [
        (extra, req)
        for extra, reqs in project["optional-dependencies"].items()
        for req in reqs
        if "==" in req or "===" in req
    ]
    assert pinned == []
    assert all("==" not in req for req in project["dependencies"])
    constraints = (REPO / "scripts" / "constraints.txt").read_text().split()
    assert "torch==2.13.0" in constraints


def test_building_the_sdist_and_wheel_prints_no_warning(tmp_path):
    """``python -m build`` (sdist, then the wheel from it) warns about nothing: an SPDX license
    string, every shipped data folder declared as a package."""
    src = tmp_path / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(REPO / name, src / name)
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info")
    for folder in PACKAGES.values():
        shutil.copytree(REPO / folder, src / folder, ignore=ignore)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    res = subprocess.run(
        [sys.executable, "-m", "build", "--no-isolation", "--outdir", str(tmp_path / "dist"), "."],
        cwd=src,
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )
    assert res.returncode == 0, res.stdout + res.stderr
    out = res.stdout + res.stderr
    warnings = [line for line in out.splitlines() if "warn" in line.lower()]
    assert warnings == [], "\n".join(warnings)
    assert sorted(p.suffix for p in (tmp_path / "dist").iterdir()) == [".gz", ".whl"]
