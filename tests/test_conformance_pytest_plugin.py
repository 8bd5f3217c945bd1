"""The pytest plugin: inert unless asked for, and the whole suite when it is."""

from __future__ import annotations

import subprocess
import sys

pytest_plugins = ["pytester"]

SAMPLE = """
import pytest

@pytest.mark.parametrize("x", [1, 2])
def test_sample(x):
    assert x > 0
"""


def _run(pytester, *args):
    # A subprocess each: the plugin is loaded from its entry point, as in a user's run.
    return pytester.runpytest_subprocess("-p", "no:cacheprovider", *args)


def test_without_the_option_the_plugin_changes_nothing(pytester):
    pytester.makepyfile(test_sample=SAMPLE)
    with_plugin = _run(pytester, "-v", "--markers")
    without = _run(pytester, "-v", "--markers", "-p", "no:haepo_conformance")
    assert "haepo_conformance" not in with_plugin.stdout.str()  # no marker registered
    assert with_plugin.stdout.lines == without.stdout.lines
    run_with = _run(pytester, "-v")
    run_without = _run(pytester, "-v", "-p", "no:haepo_conformance")
    run_with.assert_outcomes(passed=2)
    run_without.assert_outcomes(passed=2)
    items = [ln.split()[0] for ln in run_with.stdout.lines if "PASSED" in ln]
    assert items == ["test_sample.py::test_sample[1]", "test_sample.py::test_sample[2]"]
    assert "haepo_conformance" not in "\n".join(run_with.stdout.lines)
    # Only its options are there.
    assert "--haepo-backend" in _run(pytester, "--help").stdout.str()


def test_inactive_plugin_registers_no_hook_object_and_imports_nothing_heavy():
    code = (
        "import sys, pytest\n"
        "class Probe:\n"
        "    def pytest_configure(self, config):\n"
        "        assert config.pluginmanager.get_plugin('haepo-conformance-session') is None\n"
        "        assert config.pluginmanager.has_plugin('haepo_conformance')\n"
        "        heavy = [m for m in ('hypothesis', 'numpy', 'haepo_core') if m in sys.modules\n"
        "                 and m not in before]\n"
        "        assert not heavy, heavy\n"
        "before = set(sys.modules)\n"
        "sys.exit(pytest.main(['--co', '-q', '-p', 'no:cacheprovider', '-p', 'no:hypothesispytest',"
        " '--rootdir', '.', 'no_such_dir_xyz'], plugins=[Probe()]))\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd="/tmp"
    )
    # exit code 4: usage error for the missing path, after configure ran; 1 means an assert.
    assert proc.returncode == 4, proc.stdout[-2000:] + proc.stderr[-2000:]


def test_with_the_option_each_property_is_an_item(pytester):
    pytester.makepyfile(test_sample=SAMPLE)
    result = _run(
        pytester,
        "-v",
        "--haepo-backend",
        "numpy",
        "--haepo-max-examples",
        "3",
        "--haepo-derandomize",
        "--haepo-property",
        "values",
        "--haepo-property",
        "invariance.*",
        "--haepo-property",
        "variants",
    )
    out = result.stdout.str()
    assert "haepo_conformance 0.1.0: 7 properties, max 3 examples, derandomized" in out
    assert "backend numpy: numpy " in out
    result.assert_outcomes(passed=2 + 6, skipped=1)  # variants: numpy has none
    assert "haepo_conformance::numpy::invariance.padding PASSED" in out
    only = _run(
        pytester,
        "-v",
        "-m",
        "haepo_conformance",
        "--haepo-backend",
        "numpy",
        "--haepo-max-examples",
        "2",
        "--haepo-property",
        "errors",
    )
    only.assert_outcomes(passed=1, deselected=2)


def test_plugin_failure_names_property_example_and_rerun(pytester):
    result = _run(
        pytester,
        "--haepo-backend",
        "haepo_conformance._mutants:detached_weights",
        "--haepo-property",
        "gradient",
        "--haepo-max-examples",
        "10",
        "--haepo-seed",
        "7",
    )
    result.assert_outcomes(failed=1)
    out = result.stdout.str()
    assert "d loss / d logp (vs the closed form of the spec)" in out
    assert "Failing test case: gradient(" in out
    assert (
        "rerun: python -m haepo_conformance --backend "
        "haepo_conformance._mutants:detached_weights --property gradient"
    ) in out


def test_plugin_xfail_and_missing_backend(pytester):
    xfail = pytester.makefile(".txt", known="*NoLogSumExp extremes  overflow\n")
    result = _run(
        pytester,
        "-rxs",
        "--haepo-backend",
        "haepo_conformance._mutants:no_logsumexp",
        "--haepo-property",
        "extremes",
        "--haepo-max-examples",
        "4",
        "--haepo-derandomize",
        f"--haepo-xfail={xfail}",
        "--haepo-backend",
        "no_such_module_xyz:backend",
    )
    result.assert_outcomes(xfailed=1, failed=1)
    assert "no_such_module_xyz" in result.stdout.str()
