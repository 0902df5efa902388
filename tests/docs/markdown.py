"""Reading README.md and docs/**/*.md the way the doc tests need: fenced blocks (with the
fragment marker on the line before) and inline code spans, each with its page and line."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

#: the pages whose examples are checked, as paths relative to the repository
PAGES = ["README.md", *sorted(str(p.relative_to(ROOT)) for p in (ROOT / "docs").rglob("*.md"))]

#: the info strings of a Python block
PYTHON = {"python", "py", "python3"}

#: on the line right before a Python fence: the block is shown, not run (it is compiled)
FRAGMENT = re.compile(r"^<!--\s*fragment:\s*(?P<why>.*?)\s*-->\s*$")

_FENCE = re.compile(r"^(?P<indent>\s*)(?P<mark>`{3,}|~{3,})\s*(?P<info>[^\s`{]*)")


@dataclass(frozen=True)
class Block:
    """One fenced block: its page, the line of its opening fence, info string, text."""

    page: str
    line: int
    info: str
    text: str
    fragment: str | None  # the reason given by the marker before it, if any

    @property
    def python(self) -> bool:
        return self.info.lower() in PYTHON

    @property
    def where(self) -> str:
        return f"{self.page}:{self.line}"


@dataclass(frozen=True)
class Span:
    """One inline code span outside the fenced blocks (line breaks inside it made spaces)."""

    page: str
    line: int
    text: str


def read(page: str) -> str:
    return (ROOT / page).read_text(encoding="utf-8")


def blocks(page: str) -> list[Block]:
    """Every fenced block of the page, in order."""
    found: list[Block] = []
    lines = read(page).splitlines()
    i = 0
    while i < len(lines):
        m = _FENCE.match(lines[i])
        if not m:
            i += 1
            continue
        mark, indent = m["mark"], len(m["indent"])
        body: list[str] = []
        j = i + 1
        while j < len(lines) and not (
            lines[j].strip().startswith(mark) and lines[j].strip().strip(mark[0]) == ""
        ):
            body.append(lines[j][indent:] if lines[j][:indent].isspace() else lines[j])
            j += 1
        before = FRAGMENT.match(lines[i - 1].strip()) if i else None
        found.append(
            Block(page, i + 1, m["info"], "\n".join(body) + "\n", before["why"] if before else None)
        )
        i = j + 1
    return found


def prose(page: str) -> str:
    """The page with every fenced block blanked (line numbers kept)."""
    lines = read(page).splitlines()
    for b in blocks(page):
        end = b.line + b.text.count("\n")  # the closing fence
        for k in range(b.line - 1, min(end + 1, len(lines))):
            lines[k] = ""
    return "\n".join(lines)


def spans(page: str) -> list[Span]:
    """Every inline code span of the page's prose (not inside a fenced block)."""
    text = prose(page)
    found = []
    for m in re.finditer(r"(?<!`)(`+)(?!`)(.+?)(?<!`)\1(?!`)", text, re.DOTALL):
        body = m[2]
        if "\n\n" in body:  # a paragraph ended: not a span
            continue
        line = text.count("\n", 0, m.start()) + 1
        found.append(Span(page, line, " ".join(body.split())))
    return found
