"""The entry points' docstrings, filled from the shared argument text (``haepo_core._docs``),
name every argument and keep no placeholder."""

from __future__ import annotations

import importlib
import inspect
import re

import pytest

from haepo_core._docs import DOCS, fill_doc

ENTRIES = {
    "haepo_core": ("haepo_loss", "haepo_loss_packed", "haepo_loss_from_logits"),
    "haepo_backends.torch": (
        "haepo_loss",
        "haepo_loss_packed",
        "haepo_loss_from_logits",
        "haepo_loss_from_hidden",
    ),
    "haepo_backends.jax": (
        "haepo_loss",
        "haepo_loss_packed",
        "haepo_loss_from_logits",
        "haepo_loss_from_hidden",
    ),
    "haepo_adapters.trl": ("haepo_loss_from_token_logps",),
}


def _entries() -> list[tuple[str, str]]:
    return [(mod, name) for mod, names in ENTRIES.items() for name in names]


@pytest.mark.parametrize(("module", "name"), _entries())
def test_docstring_names_every_argument(module, name):
    try:
        fn = getattr(importlib.import_module(module), name)
    except ImportError as err:  # an optional extra is not installed
        pytest.skip(f"{module}: {err}")
    doc = fn.__doc__
    assert "%(" not in doc
    params = inspect.signature(fn).parameters
    # Listed in the Args section: "name: ..." or "name, other: ...".
    missing = [p for p in params if not re.search(rf"(?<![\w.`]){p}[:,] ", doc)]
    assert not missing, f"{module}.{name}: undocumented {missing}"
    assert ">>> " in doc and "Args:" in doc


def test_fill_doc_indents_each_snippet_line_like_its_placeholder():
    def f() -> None:
        """Head.

        Args:
          %(coefficients)s
        """

    lines = fill_doc(f).__doc__.split("\n")
    want = DOCS["coefficients"].split("\n")
    start = lines.index("          " + want[0])
    assert lines[start : start + len(want)] == ["          " + w for w in want]
