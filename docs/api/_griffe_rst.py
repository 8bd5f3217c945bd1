"""A griffe extension: the reStructuredText bits of the docstrings, rendered as Markdown.

The docstrings follow the Google style with a few reStructuredText roles in the manner of
optax (``.. math::`` blocks, ``:math:``, ``:func:``, ``:class:``, ``:data:``); mkdocstrings
reads Google-style sections but not those roles, so this rewrites them before rendering:
math for KaTeX (``pymdownx.arithmatex``), roles as inline code. It also reads three idioms of
the docstrings as the Google sections they mean: ``Example:`` (a doctest) as ``Examples:``,
an ``Args`` entry that documents several names at once (``mean, ref_mean: ...``) as one
entry per name (``keywords`` being ``**kwargs``), and a ``Raises`` section written as a
sentence (``ValueError / TypeError naming the argument ...``) as one entry. Anything else
griffe cannot parse stays a warning, and so fails ``mkdocs build --strict``.
"""

from __future__ import annotations

import re
import textwrap

import griffe

_ROLE = re.compile(r":(?:func|class|data|meth|attr|mod|obj|exc|py:\w+):`~?([^`]+)`")
_INLINE_MATH = re.compile(r":math:`([^`]+)`")


def _math_blocks(text: str) -> str:
    """Turn each ``.. math::`` directive and its indented body into a ``$$`` block."""
    lines = text.splitlines()
    out: list[str] = []
    i = 0
    while i < len(lines):
        line = lines[i]
        stripped = line.strip()
        if stripped.startswith(".. math::"):
            indent = line[: len(line) - len(line.lstrip())]
            body: list[str] = []
            rest = stripped[len(".. math::") :].strip()
            if rest:
                body.append(rest)
            i += 1
            while i < len(lines) and (
                not lines[i].strip() or len(lines[i]) - len(lines[i].lstrip()) > len(indent)
            ):
                body.append(lines[i])
                i += 1
            math = textwrap.dedent("\n".join(body)).strip("\n")
            if "&" in math and "\\begin" not in math:
                math = "\\begin{aligned}\n" + math + "\n\\end{aligned}"
            out.append(indent + "$$")
            out.extend(indent + m for m in math.splitlines())
            out.append(indent + "$$")
            continue
        out.append(line)
        i += 1
    return "\n".join(out)


_SECTION = re.compile(r"^(\s*)([A-Z][A-Za-z ]*):\s*$")
_NAMES = re.compile(r"^([A-Za-z_*][\w*]*(?:(?:, | and |, and )[A-Za-z_*][\w*]*)+):(.*)$")
_EXCEPTIONS = re.compile(
    r"^((?:[A-Z]\w*(?:Error|Warning|Exception))(?:\s*(?:/|,|or)\s*[A-Z]\w*)*)\s+(.*)$"
)


def _entry_indent(lines: list[str], start: int) -> str | None:
    """The indentation of the first non-blank line from ``start`` on, or None."""
    for line in lines[start:]:
        if line.strip():
            return line[: len(line) - len(line.lstrip())]
    return None


def _google_idioms(text: str, has_kwargs: bool) -> str:
    """Read ``Example:``, grouped ``Args`` names and sentence ``Raises`` as Google sections.

    A ``keywords:`` entry names the function's ``**kwargs`` where it has them; otherwise it
    speaks of the keyword-only arguments and becomes a sentence after the sections.
    """
    lines = text.splitlines()
    out: list[str] = []
    notes: list[str] = []
    section = None
    section_indent = ""
    entry_indent: str | None = None
    for i, line in enumerate(lines):
        head = _SECTION.match(line)
        if head:
            section, section_indent = head.group(2), head.group(1)
            entry_indent = _entry_indent(lines, i + 1)
            if section == "Example":
                line = f"{section_indent}Examples:"
            out.append(line)
            continue
        indent = line[: len(line) - len(line.lstrip())]
        if line.strip() and len(indent) <= len(section_indent):
            section = None
        if section in ("Args", "Arguments", "Parameters") and indent == entry_indent:
            grouped = _NAMES.match(line.strip())
            if line.strip().startswith("keywords:") and not has_kwargs:
                notes.append("Keyword arguments:" + line.strip()[len("keywords:") :])
                continue
            if line.strip().startswith("keywords:"):
                line = line.replace("keywords:", "**kwargs:", 1)
            elif grouped:
                names = re.split(r", and |, | and ", grouped.group(1))
                names = ["**kwargs" if n == "keywords" else n for n in names]
                out.extend(f"{indent}{name}:{grouped.group(2)}" for name in names)
                continue
        if section == "Raises" and indent == entry_indent and ":" not in line.split(" ")[0]:
            sentence = _EXCEPTIONS.match(line.strip())
            if sentence:
                line = f"{indent}{sentence.group(1)}: {sentence.group(2)}"
            elif not re.match(r"^[A-Z]\w*:", line.strip()):
                line = f"{indent}ValueError / TypeError: {line.strip()}"
        out.append(line)
    if notes:
        out.extend(["", *notes])
    return "\n".join(out)


def rst_to_markdown(text: str, has_kwargs: bool = False) -> str:
    """The docstring ``text`` with its reStructuredText math and roles made Markdown."""
    text = _google_idioms(text, has_kwargs)
    text = _math_blocks(text)
    text = _INLINE_MATH.sub(lambda m: "$" + m.group(1) + "$", text)
    return _ROLE.sub(lambda m: "`" + m.group(1) + "`", text)


class RstRoles(griffe.Extension):
    """Rewrite every docstring once griffe has loaded it."""

    def on_instance(self, *, obj: griffe.Object, **kwargs: object) -> None:
        if obj.docstring is not None:
            parameters = getattr(obj, "parameters", None) or ()
            has_kwargs = any(p.kind is griffe.ParameterKind.var_keyword for p in parameters)
            obj.docstring.value = rst_to_markdown(obj.docstring.value, has_kwargs)
