"""What the device check needs on the GPU machine, and whether that machine can satisfy it.

The GPU machine (Python 3.12, x86-64, no network) comes with a fixed set of packages
(``device_packages.txt`` beside this file: one distribution a line, ``name`` or
``name==version`` where the version is known). What the device check imports and the machine
lacks travels as wheels in ``.whl/`` at the repository root, downloaded here by
``device_wheels.sh``. Two commands:

    python benchmarks/_device_env.py wheels [--dest .whl]    # download the missing wheels
    python benchmarks/_device_env.py check [--wheels .whl]   # all satisfiable? (exit 1 if not)

``check`` reads each carried wheel's metadata and walks its ``Requires-Dist`` (markers evaluated
for CPython 3.12 on Linux x86-64, extras not taken): every requirement must be met by the
machine's list or by another carried wheel, with the version checked where both are known.
"""

from __future__ import annotations

import argparse
import email.parser
import subprocess
import sys
import zipfile
from pathlib import Path

from packaging.markers import default_environment
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name, parse_wheel_filename
from packaging.version import Version

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
MACHINE_LIST = HERE / "device_packages.txt"

# What the device check imports, as distributions with the versions this project supports.
# (torch, triton, numpy, hypothesis, transformers, accelerate, tqdm, matplotlib: on the machine.)
NEEDS = [
    "array-api-compat>=1.11",
    "liger-kernel>=0.6",
    "trl>=1.16,<1.17",
    "torch>=2.4",
    "triton>=3.0",
    "numpy>=1.26",
    "hypothesis>=6.100",
    "transformers>=4.56",
    "accelerate>=1.0",
    "datasets>=3.0",
    "tqdm>=4.66",
    "matplotlib>=3.8",
]

# The machine's interpreter and platform, for pip download and for environment markers.
PYTHON_VERSION = "3.12"
PLATFORMS = ["manylinux2014_x86_64", "manylinux_2_17_x86_64", "manylinux_2_28_x86_64"]
TARGET_ENV = {
    **default_environment(),
    "python_version": "3.12",
    "python_full_version": "3.12.3",
    "implementation_name": "cpython",
    "platform_python_implementation": "CPython",
    "sys_platform": "linux",
    "platform_system": "Linux",
    "platform_machine": "x86_64",
    "os_name": "posix",
    "extra": "",
}


def machine_packages(path: Path = MACHINE_LIST) -> dict[str, Version | None]:
    """``{canonical name: version or None}`` of what the GPU machine has installed."""
    out: dict[str, Version | None] = {}
    for line in path.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        name, _, version = line.partition("==")
        out[canonicalize_name(name)] = Version(version) if version else None
    return out


def wheel_metadata(wheel: Path) -> tuple[str, Version, list[Requirement]]:
    """``(canonical name, version, requirements)`` read from a wheel's METADATA."""
    with zipfile.ZipFile(wheel) as zf:
        meta = next(n for n in zf.namelist() if n.endswith(".dist-info/METADATA"))
        msg = email.parser.Parser().parsestr(zf.read(meta).decode())
    reqs = [Requirement(r) for r in msg.get_all("Requires-Dist") or []]
    return canonicalize_name(msg["Name"]), Version(msg["Version"]), reqs


def applies(req: Requirement) -> bool:
    """Whether a requirement applies on the GPU machine (no extras requested)."""
    return req.marker is None or req.marker.evaluate(TARGET_ENV)


def carried(wheels: Path) -> dict[str, tuple[Version, list[Requirement], Path]]:
    out = {}
    for whl in sorted(wheels.glob("*.whl")):
        name, version, reqs = wheel_metadata(whl)
        out[name] = (version, reqs, whl)
    return out


def problems(wheels: Path) -> list[str]:
    """Every unmet need, as a sentence; empty when the device check can run there."""
    have = machine_packages()
    bring = carried(wheels)
    found: list[str] = []

    def check(req: Requirement, who: str) -> None:
        name = canonicalize_name(req.name)
        if name in bring:
            version = bring[name][0]
            if req.specifier and not req.specifier.contains(version, prereleases=True):
                found.append(f"{who} needs {req}, the carried wheel is {name} {version}")
        elif name in have:
            version = have[name]
            if version is not None and req.specifier and not req.specifier.contains(version):
                found.append(f"{who} needs {req}, the machine has {name} {version}")
        else:
            found.append(f"{who} needs {req}: neither on the machine nor carried in {wheels}")

    for need in NEEDS:
        check(Requirement(need), "the device check")
    for name, (version, reqs, _) in bring.items():
        for req in reqs:
            if applies(req):
                check(req, f"{name} {version}")
    return found


def download(dest: Path) -> None:
    """Download the needs the machine lacks, then their missing requirements, recursively."""
    have = machine_packages()
    dest.mkdir(parents=True, exist_ok=True)
    queue = [Requirement(n) for n in NEEDS]
    done: set[str] = set()
    while queue:
        req = queue.pop(0)
        name = canonicalize_name(req.name)
        if name in have or name in done:
            continue
        done.add(name)
        spec = f"{req.name}{req.specifier}"
        print(f"[device_wheels] {spec}", flush=True)
        cmd = [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps"]
        cmd += ["--only-binary=:all:", "--python-version", PYTHON_VERSION, "-d", str(dest)]
        for platform in PLATFORMS:
            cmd += ["--platform", platform]
        subprocess.run([*cmd, spec], check=True)
        whl = _newest(dest, name)
        for sub in wheel_metadata(whl)[2]:
            if applies(sub):
                queue.append(sub)


def _newest(dest: Path, name: str) -> Path:
    found = [w for w in dest.glob("*.whl") if parse_wheel_filename(w.name)[0] == name]
    if not found:
        raise FileNotFoundError(f"no wheel of {name} in {dest}")
    return max(found, key=lambda w: w.stat().st_mtime)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    w = sub.add_parser("wheels", help="download the wheels the GPU machine lacks")
    w.add_argument("--dest", type=Path, default=ROOT / ".whl")
    c = sub.add_parser("check", help="is every need satisfiable there? (exit 1 if not)")
    c.add_argument("--wheels", type=Path, default=ROOT / ".whl")
    args = parser.parse_args()
    if args.cmd == "wheels":
        download(args.dest)
        total = sum(p.stat().st_size for p in args.dest.glob("*.whl"))
        print(
            f"[device_wheels] {len(list(args.dest.glob('*.whl')))} wheels, {total / 2**20:.1f} MiB"
        )
        return 0
    found = problems(args.wheels)
    for line in found:
        print(f"[dry-run] unmet: {line}")
    n = len(carried(args.wheels))
    print(f"[dry-run] packages: {'OK' if not found else 'FAILED'} ({n} carried wheels)")
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main())
