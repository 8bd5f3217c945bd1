"""The conformance suite as a pytest plugin (entry point ``pytest11: haepo_conformance``).

``pytest --haepo-backend=numpy --haepo-backend=my_pkg.backend:backend`` adds one test item per
(backend, property), named ``haepo_conformance::<backend>::<property>`` and marked
``haepo_conformance`` (``-m haepo_conformance`` runs only them). The other options mirror the
command line of ``python -m haepo_conformance``.

Without ``--haepo-backend`` / ``--haepo-all`` the plugin only declares its options: it
registers no hook object, no marker and no item, imports neither NumPy nor Hypothesis, and
leaves the run exactly as it was.
"""

from __future__ import annotations

from typing import Any

import pytest

__all__ = ["pytest_addoption", "pytest_configure"]

_SESSION_PLUGIN = "haepo-conformance-session"


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("haepo", "HAEPO conformance suite (haepo_conformance)")
    group.addoption(
        "--haepo-backend",
        action="append",
        default=[],
        metavar="NAME_OR_module:object",
        help="run the HAEPO conformance suite on this backend (repeatable)",
    )
    group.addoption(
        "--haepo-all",
        action="store_true",
        default=False,
        help="run the HAEPO conformance suite on every installed backend",
    )
    group.addoption(
        "--haepo-property",
        action="append",
        default=[],
        metavar="NAME",
        help="only these conformance properties (names or globs; repeatable)",
    )
    group.addoption(
        "--haepo-max-examples",
        type=int,
        default=20,
        help="Hypothesis examples per conformance property (default 20)",
    )
    group.addoption("--haepo-seed", type=int, default=None, help="Hypothesis seed")
    group.addoption(
        "--haepo-derandomize",
        action="store_true",
        default=False,
        help="derandomized Hypothesis examples",
    )
    group.addoption(
        "--haepo-dtype",
        action="append",
        default=[],
        help="dtype(s) under test (default: the backend's)",
    )
    group.addoption("--haepo-device", default=None, help="device passed to the backends")
    group.addoption(
        "--haepo-xfail",
        default=None,
        metavar="FILE",
        help="expected failures: 'BACKEND PROPERTY [reason]' per line",
    )
    group.addoption(
        "--haepo-vectors",
        default=None,
        metavar="DIR",
        help="golden vector directory (default: the packaged vectors)",
    )


def pytest_configure(config: pytest.Config) -> None:
    if not (config.getoption("haepo_backend") or config.getoption("haepo_all")):
        return
    config.addinivalue_line(
        "markers",
        "haepo_conformance: an item of the HAEPO conformance suite (added by --haepo-backend)",
    )
    config.pluginmanager.register(_Session(config), _SESSION_PLUGIN)


class ConformanceFailure(Exception):
    """A property failed: the message holds the details, the example and how to rerun."""


class ConformanceItem(pytest.Item):
    def __init__(self, *, entry: Any, prop: Any, cfg: Any, **kw: Any):
        super().__init__(**kw)
        self.entry, self.prop, self.cfg = entry, prop, cfg
        self.add_marker("haepo_conformance")

    def runtest(self) -> None:
        from ._runner import FAIL, SKIP, XFAIL, XPASS, run_property

        if self.entry.backend is None:
            if self.entry.note.startswith("SKIP: "):
                pytest.skip(self.entry.note[6:])
            raise ConformanceFailure(f"backend {self.entry.spec!r}: {self.entry.note}")
        result = run_property(self.entry.backend, self.prop, self.cfg, spec=self.entry.spec)
        if result.status == SKIP:
            pytest.skip(result.note)
        if result.status == XFAIL:
            pytest.xfail(f"{result.note}; {result.message.splitlines()[0]}")
        if result.status == XPASS:
            raise ConformanceFailure(
                f"XPASS (strict): {result.note}, but the property passed: "
                "remove it from the xfail file"
            )
        if result.status == FAIL:
            raise ConformanceFailure(
                "\n".join(
                    s
                    for s in (
                        result.message,
                        result.falsifying_example,
                        f"rerun: {result.reproduce}",
                    )
                    if s
                )
            )

    def repr_failure(self, excinfo: Any, style: Any = None) -> Any:
        if isinstance(excinfo.value, ConformanceFailure):
            return str(excinfo.value)
        return super().repr_failure(excinfo)


class _Session:
    """Registered only when the suite was asked for: builds the run and adds the items."""

    def __init__(self, config: pytest.Config):
        import random

        from ._properties import select_properties
        from ._runner import RunConfig, load_xfails, resolve_backends

        opt = config.getoption
        seed = opt("haepo_seed")
        if seed is None:
            seed = random.SystemRandom().randrange(2**31)
        self.cfg = RunConfig(
            max_examples=opt("haepo_max_examples"),
            seed=seed,
            derandomize=opt("haepo_derandomize"),
            dtypes=tuple(opt("haepo_dtype")) or None,
            device=opt("haepo_device"),
            vectors_dir=opt("haepo_vectors"),
            xfails=load_xfails(opt("haepo_xfail")) if opt("haepo_xfail") else [],
        )
        self.props = select_properties(opt("haepo_property"))
        self.entries = resolve_backends(opt("haepo_backend"), opt("haepo_all"))

    def pytest_report_header(self, config: pytest.Config) -> list[str]:
        from ._runner import header

        head = header(self.entries, self.cfg)
        mode = "derandomized" if self.cfg.derandomize else f"seed {self.cfg.seed}"
        lines = [
            f"haepo_conformance {head['haepo_conformance']}: {len(self.props)} properties, "
            f"max {self.cfg.max_examples} examples, {mode}"
        ]
        for info in head["backends"]:
            if info["loaded"]:
                lines.append(
                    f"  backend {info['name']}: {info['library']} "
                    f"{info['library_version']}, dtypes {info['dtypes']}"
                )
            else:
                lines.append(f"  backend {info['spec']}: {info['note']}")
        return lines

    def pytest_collection_modifyitems(
        self, session: pytest.Session, config: pytest.Config, items: list[pytest.Item]
    ) -> None:
        for entry in self.entries:
            props = self.props if entry.backend is not None else self.props[:1]
            for prop in props:
                name = f"haepo_conformance::{entry.spec}::{prop.name}"
                if entry.backend is None:
                    name = f"haepo_conformance::{entry.spec}::(load)"
                items.append(
                    ConformanceItem.from_parent(
                        session, name=name, entry=entry, prop=prop, cfg=self.cfg
                    )
                )
