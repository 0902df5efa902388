"""Every command line the docs show parses with procflow's own argparse parsers.

Taken from README.md and docs/**/*.md:

- every line of a ``sh`` block (``&&``, ``||``, ``;`` and ``|`` separate commands), and the
  lines of any other non-Python block that start with a procflow command (the synopses of
  configuration.md; a line that starts with spaces continues the one before);
- every inline code span that starts with ``procflow`` or ``python -m procflow``.

Before parsing: a ``#`` comment is dropped, and so are leading ``NAME=value`` environment
assignments and a ``.venv/bin/`` (or ``venv/bin/``) prefix. A synopsis is parsed in its
fullest form: ``[`` and ``]`` are dropped, ``...``/``…`` after a word or alone are dropped,
and a metavar (``FLOW``, ``QUEUE=N``, ``URL`` …) becomes a sample value of its kind
(``SAMPLES``), so a wrong type or choice in a synopsis fails too.

``procflow`` and ``python -m procflow`` are ``procflow.operator.cli.build_parser()``;
``python -m procflow.supervisor`` is ``procflow.supervisor.__main__.build_parser()``.
Commands of other programs are skipped only by the rules in ``NOT_PROCFLOW``, so a new kind of
command in a ``sh`` block fails here until it is listed. Inline spans that name a program or
command rather than run it are checked as names (``SpanKind``).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import re
import shlex
from collections.abc import Callable
from dataclasses import dataclass

import pytest

from procflow.operator import cli
from procflow.supervisor import __main__ as supervisor_cli

from .markdown import PAGES, blocks, read, spans

#: sample values for the metavars of a synopsis
SAMPLES = {
    "APP": "myapp.flows:flow",
    "FLOW": "pay",
    "F": "pay",
    "QUEUE": "check",
    "Q": "check",
    "S": "waiting",
    "N": "4",
    "ID": "01a2f3c4-5b6d-7e8f-9a0b-1c2d3e4f5a6b",
    "URL": "redis://redis.internal:6379/0",
    "U": "redis://redis.internal:6379/0",
    "SECONDS": "30",
    "LEVEL": "INFO",
    "PORT": "9464",
    "HOST": "0.0.0.0",
    "NAME": "node-a",
    "QUEUE=N": "check=4",
    "ATTR=VALUE": "userId=62",
}

#: commands of other programs, by the words they start with (after the prefixes are dropped)
NOT_PROCFLOW: dict[tuple[str, ...], str] = {
    ("pip",): "installing",
    ("python", "-m", "pip"): "installing",
    ("python3", "-m", "venv"): "making a virtual environment",
    ("python", "-m", "tox"): "the test runner",
    ("tox",): "the test runner",
    ("pytest",): "the test runner (testing.md)",
    ("kubectl",): "Kubernetes",
    ("python", "scripts/"): "the repository's scripts (a word ending in / matches a prefix)",
    ("python3", "scripts/"): "the repository's scripts",
}

#: inline spans that show what a command prints, not a command
PRINTED = {"procflow <version>"}

PROGRAMS: dict[tuple[str, ...], Callable[[], argparse.ArgumentParser]] = {
    ("procflow",): cli.build_parser,
    ("python", "-m", "procflow"): cli.build_parser,
    ("python", "-m", "procflow.supervisor"): supervisor_cli.build_parser,
}

_ENV = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*=")
#: text that starts with a procflow command (not ``procflow:F:…``, ``procflow.aio`` …)
_STARTS = re.compile(
    r"^\s*(?:[A-Za-z_]\w*=\S*\s+)*(?:\.?venv/bin/)?"
    r"(?:procflow|python3? -m procflow(?:\.supervisor)?)(?:\s|$)"
)


@dataclass(frozen=True)
class Example:
    where: str  # page:line
    text: str  # as the page shows it (one command)
    kind: str  # "parse", "program" (a program named), "command" (a subcommand named), "list"

    @property
    def id(self) -> str:
        return f"{self.where} {self.text}"[:110]


def _words(text: str) -> list[str]:
    lexer = shlex.shlex(text, posix=True, punctuation_chars="&|;")
    lexer.whitespace_split = True
    lexer.commenters = ""
    return list(lexer)


def _commands(text: str) -> list[list[str]]:
    """The commands of one shell line, comments and environment assignments dropped."""
    words = _words(text)
    for i, w in enumerate(words):
        if w.startswith("#"):
            words = words[:i]
            break
    out: list[list[str]] = [[]]
    for w in words:
        if w and set(w) <= set("&|;"):
            out.append([])
        else:
            out[-1].append(w)
    found = []
    for words in out:
        cmd = list(words)
        while cmd and _ENV.match(cmd[0]):
            del cmd[0]
        if cmd:
            cmd[0] = re.sub(r"^\.?venv/bin/", "", cmd[0])
            found.append(cmd)
    return found


def _program(cmd: list[str]) -> tuple[str, ...] | None:
    for prog in sorted(PROGRAMS, key=len, reverse=True):
        if tuple(cmd[: len(prog)]) == prog:
            return prog
    return None


def _matches(cmd: list[str], rule: tuple[str, ...]) -> bool:
    return len(cmd) >= len(rule) and all(
        w.startswith(r) if r.endswith("/") else w == r for w, r in zip(cmd, rule, strict=False)
    )


def _skipped(cmd: list[str]) -> bool:
    return any(_matches(cmd, rule) for rule in NOT_PROCFLOW)


def _is_procflow(text: str) -> bool:
    return bool(_STARTS.match(text))


def _from_blocks(page: str) -> list[Example]:
    found = []
    for b in blocks(page):
        if b.python:
            continue
        lines: list[tuple[int, str]] = []
        for n, line in enumerate(b.text.splitlines(), start=b.line + 1):
            if line[:1].isspace() and lines and line.strip():
                lines[-1] = (lines[-1][0], lines[-1][1] + " " + line.strip())
            else:
                lines.append((n, line))
        for n, line in lines:
            if not line.strip() or line.lstrip().startswith("#"):
                continue
            if b.info == "sh":
                for cmd in _commands(line):
                    found.append(Example(f"{page}:{n}", shlex.join(cmd), "parse"))
            elif _is_procflow(line):
                found.append(Example(f"{page}:{n}", line.split(" #")[0].strip(), "parse"))
    return found


def _span_kind(text: str) -> str:
    cmd = _commands(text)[0]
    prog = _program(cmd)
    assert prog is not None
    rest = _fullest(cmd[len(prog) :])
    subcommands = _subcommands(PROGRAMS[prog]())
    if not rest:
        return "program"
    if subcommands and "/" in rest:
        return "list"
    if subcommands and len(rest) == 1 and rest[0] in subcommands:
        return "command"
    return "parse"


def _from_spans(page: str) -> list[Example]:
    found = []
    for s in spans(page):
        if s.text in PRINTED or not _is_procflow(s.text):
            continue
        found.append(Example(f"{page}:{s.line}", s.text, _span_kind(s.text)))
    return found


def _fullest(args: list[str]) -> list[str]:
    """A synopsis's arguments with every optional part present and metavars as samples."""
    out = []
    for arg in args:
        word = re.sub(r"(\.\.\.|…)$", "", arg.replace("[", "").replace("]", ""))
        if word:
            out.append(SAMPLES.get(word, word))
    return out


def _parse(parser: argparse.ArgumentParser, args: list[str]) -> None:
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        try:
            parser.parse_args(args)
        except SystemExit as exc:  # --help, --version: 0; a parse error: 2
            assert exc.code == 0, f"argparse refused {args}: {err.getvalue().strip()}"


def _subcommands(parser: argparse.ArgumentParser) -> set[str]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return set(action.choices)
    return set()


EXAMPLES = [e for page in PAGES for e in (*_from_blocks(page), *_from_spans(page))]


def test_the_docs_have_command_examples() -> None:
    kinds = {e.kind for e in EXAMPLES}
    assert len(EXAMPLES) > 40 and kinds == {"parse", "program", "command", "list"}, kinds


@pytest.mark.parametrize("example", EXAMPLES, ids=lambda e: e.id)
def test_command_example_parses(example: Example) -> None:
    for cmd in _commands(example.text):
        prog = _program(cmd)
        if prog is None:
            assert _skipped(cmd), (
                f"{example.where}: {shlex.join(cmd)!r} is neither a procflow command nor "
                "one of NOT_PROCFLOW's programs; add a rule if it is not procflow's"
            )
            continue
        parser = PROGRAMS[prog]()
        rest = cmd[len(prog) :]
        if example.kind == "program":
            continue  # the program's name alone, as prose names it
        if example.kind in ("command", "list"):
            names = [w for w in _fullest(rest) if w != "/"]
            unknown = set(names) - _subcommands(parser)
            assert not unknown, f"{example.where}: no such command {sorted(unknown)}"
            continue
        _parse(parser, _fullest(rest))


def test_a_wrong_example_fails() -> None:
    """The check is real: a flag the parser does not have, a bad choice, a bad type."""
    for args in (
        ["status", "--wach"],
        ["jobs", "pay", "--state", "lost"],
        ["jobs", "x", "--limit", "many"],
    ):
        with pytest.raises(AssertionError, match="argparse refused"):
            _parse(cli.build_parser(), args)
    with pytest.raises(AssertionError, match="argparse refused"):
        _parse(supervisor_cli.build_parser(), ["--workers", "check=2"])  # no APP


def _options(parser: argparse.ArgumentParser) -> set[str]:
    found = {o for a in parser._actions for o in a.option_strings if o.startswith("--")}
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                found |= _options(sub)
    return found - {"--help"}


@pytest.mark.parametrize("prog", sorted({" ".join(p) for p in PROGRAMS}))
def test_every_flag_is_documented(prog: str) -> None:
    """Each option and subcommand of the parsers appears in the docs' text."""
    parser = PROGRAMS[tuple(prog.split())]()
    text = "\n".join(read(page) for page in PAGES)
    missing = sorted(o for o in _options(parser) | _subcommands(parser) if o not in text)
    assert not missing, f"{prog}: not in README.md or docs/: {missing}"
