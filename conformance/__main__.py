"""``python -m haepo_conformance``: run the conformance suite on HAEPO backends.

Examples::

    python -m haepo_conformance --all
    python -m haepo_conformance --backend numpy --backend my_pkg.backend:backend
    python -m haepo_conformance --backend torch --property 'invariance.*' --max-examples 200
    python -m haepo_conformance --all --xfail known.txt --report out.json

Exit status: 0 when every property passed (or was skipped or xfailed), 1 on any failure,
2 on a usage error.
"""

from __future__ import annotations

import argparse
import random
import sys
from collections.abc import Sequence

from ._properties import PROPERTIES, select_properties
from ._reference import EPS
from ._runner import (
    RunConfig,
    failed,
    format_table,
    header,
    load_xfails,
    resolve_backends,
    run_suite,
    write_report,
)

__all__ = ["build_parser", "main"]


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m haepo_conformance",
        description="Check HAEPO backends against the specification, under Hypothesis.",
        epilog="Properties: " + ", ".join(f"{q.number} {q.name}" for q in PROPERTIES.values()),
    )
    p.add_argument(
        "--backend",
        action="append",
        default=[],
        metavar="NAME_OR_module:object",
        help="a registered backend name (entry-point group haepo.backends) or "
        "'package.module:object'; repeatable",
    )
    p.add_argument(
        "--all",
        action="store_true",
        help="every registered backend; those whose framework is not installed "
        "are skipped with a note",
    )
    p.add_argument(
        "--property",
        action="append",
        default=[],
        metavar="NAME",
        help="run only these properties (names, globs such as 'invariance.*', or "
        "property numbers 1-10); repeatable",
    )
    p.add_argument(
        "--list",
        action="store_true",
        help="list the properties and the registered backends, then exit",
    )
    p.add_argument(
        "--max-examples",
        type=int,
        default=20,
        help="Hypothesis examples per property (default 20; extremes use at most "
        "4 and variants at most 8)",
    )
    p.add_argument(
        "--seed",
        type=int,
        default=None,
        help="Hypothesis seed (default: a random one, printed so a run can be repeated)",
    )
    p.add_argument(
        "--derandomize",
        action="store_true",
        help="derive examples from the test itself: the same on every run",
    )
    p.add_argument(
        "--no-shrink",
        action="store_true",
        help="report the first failing example as found, without shrinking it "
        "(faster; the example is larger)",
    )
    p.add_argument(
        "--dtype",
        action="append",
        default=[],
        choices=sorted(EPS),
        help="dtype(s) under test; repeatable (default: every dtype the backend lists)",
    )
    p.add_argument("--device", default=None, help="device passed to the backend (e.g. cuda)")
    p.add_argument(
        "--xfail",
        default=None,
        metavar="FILE",
        help="file of expected failures: 'BACKEND PROPERTY [reason]' per line",
    )
    p.add_argument(
        "--vectors",
        default=None,
        metavar="DIR",
        help="golden vector directory (default: the packaged vectors)",
    )
    p.add_argument(
        "--report", default=None, metavar="OUT.json", help="write a JSON report of the run"
    )
    p.add_argument("-q", "--quiet", action="store_true", help="no progress lines")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Run the conformance suite from the command line (``python -m haepo_conformance``).

    Args:
      argv: the command-line arguments (default: ``sys.argv[1:]``); ``--help`` lists them.

    Returns:
      The exit status: 0 when every property passed, non-zero otherwise.
    """
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.list:
        from haepo_core import list_backends

        for q in PROPERTIES.values():
            print(f"{q.number} {q.name:<24} {q.summary}")
        print("registered backends:", ", ".join(list_backends()))
        return 0
    if not args.backend and not args.all:
        parser.error("expected --backend NAME_OR_module:object (repeatable) or --all")
    if args.max_examples < 1:
        parser.error(f"--max-examples: expected >= 1, got {args.max_examples}")
    try:
        props = select_properties(args.property)
        xfails = load_xfails(args.xfail) if args.xfail else []
    except (ValueError, OSError) as err:
        parser.error(str(err))
    seed = args.seed if args.seed is not None else random.SystemRandom().randrange(2**31)
    cfg = RunConfig(
        max_examples=args.max_examples,
        seed=seed,
        derandomize=args.derandomize,
        dtypes=tuple(args.dtype) or None,
        device=args.device,
        vectors_dir=args.vectors,
        xfails=xfails,
        shrink=not args.no_shrink,
    )
    entries = resolve_backends(args.backend, args.all)
    log = (lambda s: None) if args.quiet else (lambda s: print(s, file=sys.stderr, flush=True))
    head = header(entries, cfg)
    print(
        "haepo conformance suite",
        head["haepo_conformance"],
        f"(hypothesis {head['hypothesis']}, python {head['python']})",
    )
    for info in head["backends"]:
        if info["loaded"]:
            print(
                f"  backend {info['name']}: {info['library']} {info['library_version']}, "
                f"dtypes {info['dtypes']}, devices {info['devices']}, "
                f"capabilities {info['capabilities']}, variants "
                f"{info['variants'] or 'none'}"
            )
        else:
            print(f"  backend {info['spec']}: {info['note']}")
    mode = "derandomized" if cfg.derandomize else f"seed {seed}"
    print(f"  {len(props)} properties, max {cfg.max_examples} examples, {mode}", flush=True)
    results = run_suite(entries, props, cfg, progress=log)
    print()
    print(format_table(results, entries))
    if args.report:
        write_report(
            args.report,
            entries,
            cfg,
            results,
            argv=list(argv) if argv is not None else sys.argv[1:],
        )
        print(f"report written to {args.report}")
    return 1 if failed(results) else 0


if __name__ == "__main__":
    sys.exit(main())
