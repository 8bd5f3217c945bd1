"""Running the properties on backends: Hypothesis settings, results, xfail files, the JSON
report and the final table."""

from __future__ import annotations

import dataclasses
import fnmatch
import json
import platform
import sys
import time
from collections.abc import Callable, Sequence
from importlib import metadata
from pathlib import Path
from typing import Any

import hypothesis
from hypothesis import HealthCheck, Phase, given, settings

import haepo_core

from ._boundary import ENTRY_ARGS, has_entry, release_compiled
from ._properties import PROPERTIES, Context, Property, variants_of

__all__ = [
    "BackendEntry",
    "Result",
    "RunConfig",
    "backend_info",
    "format_table",
    "load_xfails",
    "resolve_backends",
    "run_property",
    "run_suite",
    "write_report",
]

PASS, FAIL, XFAIL, XPASS, SKIP = "PASS", "FAIL", "XFAIL", "XPASS", "SKIP"
FAILING = (FAIL, XPASS)


@dataclasses.dataclass
class RunConfig:
    """How to run the suite (the CLI options and the pytest plugin options map onto this)."""

    max_examples: int = 20
    seed: int | None = None
    derandomize: bool = False
    dtypes: tuple[str, ...] | None = None
    device: str | None = None
    vectors_dir: str | None = None
    shrink: bool = True
    xfails: list[tuple[str, str, str]] = dataclasses.field(default_factory=list)


@dataclasses.dataclass
class BackendEntry:
    """A backend to test: ``spec`` as given by the user, the loaded object (None when it could
    not be loaded), and why not."""

    spec: str
    backend: Any = None
    note: str = ""


@dataclasses.dataclass
class Result:
    backend: str
    property: str
    number: int
    status: str
    seconds: float = 0.0
    examples: int = 0
    message: str = ""
    falsifying_example: str = ""
    reproduce: str = ""
    note: str = ""

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _library_of(backend: Any) -> str:
    name = getattr(getattr(backend, "xp", None), "__name__", "") or ""
    if name.startswith("array_api_compat."):
        return name.split(".")[1]
    return name.split(".")[0] or "unknown"


def devices_of(backend: Any) -> tuple[str, ...]:
    """``backend.devices`` (optional: ``("cpu",)`` when absent)."""
    return tuple(getattr(backend, "devices", ("cpu",)))


def capabilities(backend: Any) -> list[str]:
    """The optional parts of the protocol the backend implements."""
    names = [e for e in ENTRY_ARGS if has_entry(backend, e)]
    names += [n for n in ("grad", "hvp") if callable(getattr(backend, n, None))]
    if getattr(backend, "chunked", False):
        names.append("chunked")
    return names


def backend_info(entry: BackendEntry) -> dict[str, Any]:
    """What the report header says about a backend: name, library and its version."""
    b = entry.backend
    info: dict[str, Any] = {"spec": entry.spec}
    if b is None:
        info.update(name=entry.spec, loaded=False, note=entry.note)
        return info
    lib = getattr(b, "library", None) or _library_of(b)
    version = getattr(b, "version", None)
    if version is None:
        mod = sys.modules.get(lib)
        version = getattr(mod, "__version__", None)
    if version is None:
        try:
            version = metadata.version(lib.replace("_", "-"))
        except metadata.PackageNotFoundError:
            version = "unknown"
    info.update(
        name=b.name,
        loaded=True,
        library=lib,
        library_version=str(version),
        dtypes=list(b.dtypes),
        devices=list(devices_of(b)),
        capabilities=capabilities(b),
        second_order=list(getattr(b, "second_order", ()) or ())
        if callable(getattr(b, "hvp", None))
        else [],
        variants=sorted(variants_of(b)),
    )
    return info


def resolve_backends(specs: Sequence[str], use_all: bool) -> list[BackendEntry]:
    """Load the backends named by ``specs`` (names or ``module:object``), plus every registered
    one with ``use_all``. Under ``--all`` a backend whose framework (or module) is not
    installed is kept with a note and skipped; a backend named explicitly that fails to load
    is kept with the error, and counts as a failure.
    """
    from haepo_core import list_backends, load_backend

    entries: list[BackendEntry] = []
    seen: set[str] = set()
    wanted = [(s, False) for s in specs]
    if use_all:
        wanted += [(name, True) for name in list_backends() if name not in specs]
    for spec, optional in wanted:
        if spec in seen:
            continue
        seen.add(spec)
        try:
            entries.append(BackendEntry(spec, load_backend(spec)))
        except (ImportError, AttributeError) as err:
            why = f"not installed ({type(err).__name__}: {err})"
            entries.append(BackendEntry(spec, None, ("SKIP: " if optional else "") + why))
        except Exception as err:  # a broken backend is a failure, never a crash of the suite
            entries.append(BackendEntry(spec, None, f"could not load: {type(err).__name__}: {err}"))
    return entries


def load_xfails(path: str | Path) -> list[tuple[str, str, str]]:
    """Read an xfail file: one ``BACKEND PROPERTY [reason...]`` per line, globs allowed
    (``torch variants``, ``* extremes  bf16 overflows``), ``#`` starts a comment."""
    rules = []
    for lineno, line in enumerate(Path(path).read_text().splitlines(), 1):
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        parts = line.split(None, 2)
        if len(parts) < 2:
            raise ValueError(f"{path}:{lineno}: expected 'BACKEND PROPERTY [reason]', got {line!r}")
        rules.append((parts[0], parts[1], parts[2] if len(parts) > 2 else ""))
    return rules


def _xfail_reason(cfg: RunConfig, backend: str, spec: str, prop: str) -> str | None:
    for b, p, reason in cfg.xfails:
        if (
            fnmatch.fnmatchcase(backend, b) or fnmatch.fnmatchcase(spec, b)
        ) and fnmatch.fnmatchcase(prop, p):
            return reason or "listed in the xfail file"
    return None


def _reproduce(spec: str, prop: Property, cfg: RunConfig, dtypes: Sequence[str]) -> str:
    cmd = [
        "python -m haepo_conformance",
        f"--backend {spec}",
        f"--property {prop.name}",
        f"--max-examples {prop.max_examples(cfg.max_examples)}",
    ]
    cmd.append("--derandomize" if cfg.derandomize else f"--seed {cfg.seed}")
    for d in dtypes:
        cmd.append(f"--dtype {d}")
    if cfg.device:
        cmd.append(f"--device {cfg.device}")
    return " ".join(cmd)


def run_property(
    backend: Any, prop: Property, cfg: RunConfig, *, spec: str | None = None
) -> Result:
    """Run one property on one backend; never raises for a backend failure."""
    spec = spec or backend.name
    dtypes = tuple(cfg.dtypes) if cfg.dtypes else tuple(backend.dtypes)
    result = Result(backend=backend.name, property=prop.name, number=prop.number, status=PASS)
    xfail = _xfail_reason(cfg, backend.name, spec, prop.name)
    start = time.perf_counter()
    unsupported = [d for d in dtypes if d not in tuple(backend.dtypes)]
    skip = None
    if unsupported:
        skip = f"dtype(s) {unsupported} not in backend.dtypes {tuple(backend.dtypes)}"
    elif cfg.device is not None and cfg.device not in devices_of(backend):
        skip = f"device {cfg.device!r} not in backend.devices {devices_of(backend)}"
    else:
        ctx = Context(dtypes=dtypes, device=cfg.device, vectors_dir=cfg.vectors_dir)
        skip = prop.applies(backend, ctx)
    if skip:
        result.status, result.note = SKIP, skip
        return result
    try:
        if prop.run is not None:
            note = prop.run(backend, ctx)
            if note.startswith("SKIP: "):
                result.status, result.note = SKIP, note[6:]
            else:
                result.note = note
        else:
            result.examples = _run_hypothesis(backend, prop, cfg, ctx)
    except Exception as err:
        result.status = FAIL
        result.message = f"{type(err).__name__}: {err}"
        notes = [str(n).strip() for n in getattr(err, "__notes__", [])]
        result.falsifying_example = "\n".join(n for n in notes if n)
        result.reproduce = _reproduce(spec, prop, cfg, dtypes)
    result.seconds = round(time.perf_counter() - start, 3)
    if xfail is not None:
        result.note = f"xfail: {xfail}"
        result.status = (
            XFAIL if result.status == FAIL else (XPASS if result.status == PASS else result.status)
        )
    return result


def _phases(shrink: bool) -> tuple[Phase, ...]:
    # No "explain" phase: it re-runs the failing example under coverage tracing, which costs
    # minutes on a slow backend and tells a backend author little.
    drop = {"explain"} | (set() if shrink else {"shrink"})
    return tuple(p for p in Phase if p.name not in drop)


# Examples between two releases of the backend's compiled-program cache (see
# release_compiled): often enough to keep memory flat, rarely enough that recompiling the
# programs of repeated shapes costs little.
RELEASE_EVERY = 20


def _run_hypothesis(backend: Any, prop: Property, cfg: RunConfig, ctx: Context) -> int:
    assert prop.build is not None
    strategy, check = prop.build(backend, ctx)
    calls = [0]

    def body(example: Any) -> None:
        calls[0] += 1
        if calls[0] % RELEASE_EVERY == 0:
            release_compiled(backend)  # keeps memory flat over hundreds of examples
        check(example)

    body.__name__ = body.__qualname__ = prop.name.replace(".", "_")
    test: Callable[[], None] = given(example=strategy)(body)
    test = settings(
        max_examples=prop.max_examples(cfg.max_examples),
        derandomize=cfg.derandomize,
        database=None,
        deadline=None,
        print_blob=True,
        report_multiple_bugs=False,
        suppress_health_check=list(HealthCheck),
        phases=_phases(cfg.shrink),
    )(test)
    if not cfg.derandomize and cfg.seed is not None:
        test = hypothesis.seed(cfg.seed)(test)
    test()
    return calls[0]


def run_suite(
    entries: Sequence[BackendEntry],
    properties: Sequence[Property] | None = None,
    cfg: RunConfig | None = None,
    *,
    progress: Callable[[str], None] | None = None,
) -> list[Result]:
    """Every selected property on every backend. Backends that could not be loaded give one
    result each (SKIP under ``--all`` when not installed, else FAIL)."""
    cfg = cfg or RunConfig()
    props = list(properties) if properties is not None else list(PROPERTIES.values())
    results: list[Result] = []
    for entry in entries:
        if entry.backend is None:
            skipped = entry.note.startswith("SKIP: ")
            results.append(
                Result(
                    backend=entry.spec,
                    property="(load)",
                    number=0,
                    status=SKIP if skipped else FAIL,
                    note=entry.note[6:] if skipped else "",
                    message="" if skipped else entry.note,
                )
            )
            if progress:
                progress(f"[{entry.spec}] {entry.note}")
            continue
        for prop in props:
            res = run_property(entry.backend, prop, cfg, spec=entry.spec)
            results.append(res)
            if progress:
                extra = f" ({res.examples} examples)" if res.examples else ""
                tail = f"  {res.note}" if res.note else ""
                progress(
                    f"[{res.backend}] {prop.number} {prop.name:<24} {res.status:<5} "
                    f"{res.seconds:6.2f}s{extra}{tail}"
                )
    return results


def failed(results: Sequence[Result]) -> bool:
    return any(r.status in FAILING for r in results)


def format_table(results: Sequence[Result], entries: Sequence[BackendEntry]) -> str:
    """The closing table: one row per property, one column per backend, then how to
    reproduce each failure."""
    names = []
    for e in entries:
        names.append(e.backend.name if e.backend is not None else e.spec)
    cell = {(r.backend, r.property): r for r in results}
    props = [p for p in PROPERTIES.values() if any(r.property == p.name for r in results)]
    width = max([len("property")] + [len(f"{p.number} {p.name}") for p in props])
    cols = [max(len(n), 5) for n in names]
    lines = ["  ".join([f"{'property':<{width}}"] + [f"{n:<{c}}" for n, c in zip(names, cols)])]
    lines.append("  ".join(["-" * width] + ["-" * c for c in cols]))
    for p in props:
        row = [f"{f'{p.number} {p.name}':<{width}}"]
        for n, c in zip(names, cols):
            r = cell.get((n, p.name))
            row.append(f"{(r.status if r else '-'):<{c}}")
        lines.append("  ".join(row))
    for r in results:
        if r.property == "(load)":
            lines.append(f"{r.backend}: {r.status} {r.note or r.message}")
    bad = [r for r in results if r.status in FAILING and r.property != "(load)"]
    if bad:
        lines.append("")
        lines.append("Failures (how to reproduce):")
    for r in bad:
        lines.append(f"- {r.backend} / {r.property}: {r.status}")
        if r.message:
            lines.extend("    " + ln for ln in r.message.splitlines()[:12])
        if r.falsifying_example:
            lines.extend("    " + ln for ln in r.falsifying_example.splitlines()[:40])
        if r.reproduce:
            lines.append(f"    rerun: {r.reproduce}")
    n_fail = len([r for r in results if r.status in FAILING])
    counts = {
        s: len([r for r in results if r.status == s]) for s in (PASS, FAIL, XFAIL, XPASS, SKIP)
    }
    lines.append("")
    lines.append(
        ", ".join(f"{v} {k.lower()}" for k, v in counts.items() if v)
        + (" -> FAILED" if n_fail else " -> OK")
    )
    return "\n".join(lines)


def header(entries: Sequence[BackendEntry], cfg: RunConfig) -> dict[str, Any]:
    """The report header: versions of everything under test and the settings of the run."""
    return {
        "haepo_conformance": haepo_core.__version__,
        "haepo_core": haepo_core.__version__,
        "hypothesis": hypothesis.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "settings": {
            "max_examples": cfg.max_examples,
            "seed": cfg.seed,
            "derandomize": cfg.derandomize,
            "shrink": cfg.shrink,
            "dtypes": list(cfg.dtypes) if cfg.dtypes else None,
            "device": cfg.device,
            "vectors_dir": cfg.vectors_dir,
            "xfails": [list(x) for x in cfg.xfails],
        },
        "backends": [backend_info(e) for e in entries],
    }


def write_report(
    path: str | Path,
    entries: Sequence[BackendEntry],
    cfg: RunConfig,
    results: Sequence[Result],
    argv: Sequence[str] | None = None,
) -> None:
    """Write the JSON report (format in docs/conformance.md)."""
    report = header(entries, cfg)
    report["command"] = list(argv) if argv is not None else None
    report["results"] = [r.as_dict() for r in results]
    report["passed"] = not failed(results)
    Path(path).write_text(json.dumps(report, indent=2) + "\n")
