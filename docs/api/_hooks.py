"""MkDocs hooks of the haepo site: what ``mkdocs build --strict`` checks beyond MkDocs itself.

- Every public name (``__all__``) of the documented packages that is a function or a class has
  a docstring of its own; a missing one is logged as a warning, so the strict build fails.
- The pages are also read on GitHub, where a link such as ``../examples/x.py`` reaches a file of
  the repository outside ``docs/``. The site has no such file: those links (to files that exist)
  become inline code naming the path; a link to a file that does not exist stays, and the strict
  build reports it.
"""

from __future__ import annotations

import importlib
import inspect
import logging
import re
from pathlib import Path
from typing import Any

log = logging.getLogger("mkdocs.plugins.haepo_docs")

ROOT = Path(__file__).resolve().parents[2]

# The packages of the API reference; the optional ones are documented once they exist.
PACKAGES = (
    "haepo_core",
    "haepo_backends.torch",
    "haepo_backends.jax",
    "haepo_adapters.cleanrl",
    "haepo_adapters.trl",
    "haepo_conformance",
)
OPTIONAL_PACKAGES = ("haepo_adapters.sb3", "haepo_adapters.jax_rl")

_LINK = re.compile(r"(?<!!)\[([^\]]+)\]\(((?:\.\./)+[^)\s#]+)(#[^)]*)?\)")


def undocumented(module_name: str) -> list[str]:
    """The public functions and classes of ``module_name`` without a docstring of their own."""
    module = importlib.import_module(module_name)
    missing = []
    for name in getattr(module, "__all__", ()):
        obj = getattr(module, name)
        if inspect.isclass(obj):
            doc = obj.__dict__.get("__doc__")
        elif inspect.isroutine(obj):
            doc = getattr(obj, "__doc__", None)
        else:
            continue
        if not (doc and doc.strip()):
            missing.append(f"{module_name}.{name}")
    return missing


def on_pre_build(config: Any, **kwargs: Any) -> None:
    for name in PACKAGES + OPTIONAL_PACKAGES:
        try:
            missing = undocumented(name)
        except ModuleNotFoundError:
            if name in PACKAGES:
                raise
            continue
        for full in missing:
            log.warning("public name without a docstring: %s", full)


def on_page_markdown(markdown: str, page: Any, config: Any, **kwargs: Any) -> str:
    docs_dir = Path(config["docs_dir"]).resolve()
    page_dir = (docs_dir / page.file.src_path).parent

    def outside(match: re.Match[str]) -> str:
        target = (page_dir / match.group(2)).resolve()
        if target.is_relative_to(docs_dir) or not target.exists():
            return match.group(0)
        text = match.group(1)
        path = target.relative_to(ROOT).as_posix()
        return text if text.strip("`") == path else f"{text} (`{path}`)"

    return _LINK.sub(outside, markdown)
