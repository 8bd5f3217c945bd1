"""``python -m haepo_conformance``: options, exit status, table, JSON report, xfail file,
backend discovery (``--all`` skips what is not installed and imports nothing else)."""

from __future__ import annotations

import json
import subprocess
import sys
from importlib import metadata

import pytest
from haepo_conformance.__main__ import main

import haepo_core._backend as backend_module

FAST = ["--max-examples", "3", "--derandomize", "-q"]


def test_passing_run_exits_zero_and_prints_the_table(capsys):
    code = main(["--backend", "numpy", "--property", "values", "--property", "namespace", *FAST])
    out = capsys.readouterr().out
    assert code == 0
    assert "backend numpy: numpy " in out  # header: backend and library version
    assert "1 values" in out and "8 namespace" in out
    assert out.rstrip().endswith("2 pass -> OK")


def test_failing_run_exits_nonzero_and_says_how_to_reproduce(capsys):
    spec = "haepo_conformance._mutants:entropy_sign"
    code = main(
        ["--backend", spec, "--property", "values", "--max-examples", "30", "--seed", "5", "-q"]
    )
    out = capsys.readouterr().out
    assert code == 1
    assert "numpy+EntropySign / values: FAIL" in out
    assert "Failing test case: values(" in out  # Hypothesis' minimal example
    assert f"rerun: python -m haepo_conformance --backend {spec} --property values" in out
    assert "--seed 5" in out
    assert out.rstrip().endswith("-> FAILED")


def test_report_json_has_header_and_results(tmp_path):
    report = tmp_path / "out.json"
    code = main(
        [
            "--backend",
            "numpy",
            "--backend",
            "array_api_strict",
            "--property",
            "errors",
            "--report",
            str(report),
            *FAST,
        ]
    )
    data = json.loads(report.read_text())
    assert code == 0 and data["passed"] is True
    names = [b["name"] for b in data["backends"]]
    assert names == ["numpy", "array_api_strict"]
    for b in data["backends"]:
        assert b["library_version"] not in ("", "unknown")
        assert b["dtypes"] == ["float32", "float64"]
    assert data["settings"]["max_examples"] == 3 and data["settings"]["derandomize"] is True
    assert [(r["backend"], r["property"], r["status"]) for r in data["results"]] == [
        ("numpy", "errors", "PASS"),
        ("array_api_strict", "errors", "PASS"),
    ]
    assert data["results"][0]["examples"] == 3


def test_xfail_file_turns_a_known_failure_into_xfail_and_a_pass_into_strict_xpass(tmp_path):
    spec = "haepo_conformance._mutants:no_logsumexp"
    xfail = tmp_path / "known.txt"
    xfail.write_text(
        "# known problems\n*NoLogSumExp extremes   no max shift yet\nnumpy+NoLogSumExp errors\n"
    )
    report = tmp_path / "r.json"
    code = main(
        [
            "--backend",
            spec,
            "--property",
            "extremes",
            "--property",
            "errors",
            "--xfail",
            str(xfail),
            "--report",
            str(report),
            *FAST,
        ]
    )
    status = {r["property"]: r for r in json.loads(report.read_text())["results"]}
    assert status["extremes"]["status"] == "XFAIL"
    assert status["extremes"]["note"] == "xfail: no max shift yet"
    assert status["errors"]["status"] == "XPASS"  # listed, but passes: stale entry
    assert code == 1
    xfail.write_text("*NoLogSumExp extremes\n")
    assert main(["--backend", spec, "--property", "extremes", "--xfail", str(xfail), *FAST]) == 0


def test_bad_xfail_line_and_unknown_property_are_usage_errors(tmp_path, capsys):
    bad = tmp_path / "bad.txt"
    bad.write_text("numpy\n")
    with pytest.raises(SystemExit) as exc:
        main(["--backend", "numpy", "--xfail", str(bad)])
    assert exc.value.code == 2
    with pytest.raises(SystemExit) as exc:
        main(["--backend", "numpy", "--property", "no_such_property"])
    assert exc.value.code == 2
    with pytest.raises(SystemExit) as exc:
        main([])
    assert exc.value.code == 2
    assert "expected --backend" in capsys.readouterr().err


def test_property_selection_by_glob_and_issue_number(capsys):
    main(["--backend", "numpy", "--property", "invariance.p*", "--property", "6", *FAST])
    out = capsys.readouterr().out
    rows = [ln.split()[1] for ln in out.splitlines() if ln[:2] in ("3 ", "6 ")]
    assert rows == ["invariance.permutation", "invariance.padding", "invariance.packed", "errors"]


def test_unloadable_explicit_backend_fails(capsys):
    assert main(["--backend", "no_such_module_xyz:backend", "--property", "values", *FAST]) == 1
    assert "not installed" in capsys.readouterr().out


def test_all_skips_backends_that_are_not_installed(monkeypatch, capsys):
    real = metadata.entry_points

    def fake(**kw):
        eps = list(real(**kw))
        if kw.get("group") == backend_module.ENTRY_POINT_GROUP:
            # the registered numpy backend plus one whose module does not exist
            eps = [ep for ep in eps if ep.name == "numpy"]
            eps.append(
                metadata.EntryPoint(
                    "ghost", "haepo_ghost_framework_xyz:backend", backend_module.ENTRY_POINT_GROUP
                )
            )
        return eps

    monkeypatch.setattr(backend_module.metadata, "entry_points", fake)
    code = main(["--all", "--property", "namespace", *FAST])
    out = capsys.readouterr().out
    assert code == 0
    assert "backend ghost: SKIP: not installed (ModuleNotFoundError" in out
    assert "ghost: SKIP not installed" in out
    assert "backend numpy: numpy " in out and "1 pass" in out


def test_discovery_imports_no_framework_the_run_does_not_use():
    code = (
        "import sys; from haepo_conformance.__main__ import main\n"
        "from haepo_core import list_backends\n"
        "names = list_backends(); assert {'numpy', 'array_api_strict', 'torch', 'jax'} <= "
        "set(names), names\n"
        "assert main(['--backend', 'numpy', '--property', 'values', '--max-examples', '2', "
        "'-q']) == 0\n"
        "bad = [m for m in ('torch', 'jax', 'tensorflow') if m in sys.modules]\n"
        "assert not bad, bad\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]


def test_list_prints_properties_and_backends(capsys):
    assert main(["--list"]) == 0
    out = capsys.readouterr().out
    assert "2 gradient" in out and "registered backends: " in out


def test_same_seed_gives_the_same_falsifying_example(tmp_path):
    args = [
        "--backend",
        "haepo_conformance._mutants:global_softmax",
        "--property",
        "invariance.groups",
        "--max-examples",
        "10",
        "--seed",
        "123",
        "-q",
    ]
    examples = []
    for i in range(2):
        report = tmp_path / f"r{i}.json"
        assert main([*args, "--report", str(report)]) == 1
        examples.append(json.loads(report.read_text())["results"][0]["falsifying_example"])
    assert examples[0] and examples[0] == examples[1]
