"""Refresh the lock files of the test set-up: ``.venv/bin/python scripts/lock.py [--upgrade]``.

- ``requirements/lock.txt`` — every package the test, lint, docs and tooling environments
  install, at one exact version each: procflow's dependencies (with the extras ``embedded``
  and ``dashboard``) and ``requirements/{test,docs,tools}.in``. Universal: one file for every
  Python procflow supports (3.10 and newer) and every platform, with markers where the
  versions differ. Every tox environment installs through it (``PIP_CONSTRAINT``), and so does
  scripts/test.py for tox itself.
- ``requirements/lowest.txt`` — the lowest versions procflow's own ranges allow (uv's
  ``lowest-direct`` resolution of pyproject.toml), beside the test tools at their locked
  versions: ``tox -e lowest`` runs mypy and the suite there.

Without ``--upgrade`` the pins already in lock.txt are kept where they still fit (after an
edit of pyproject.toml or an ``.in`` file, only what must move moves); with ``--upgrade``
every package takes its newest release — a change to review and commit on purpose.
``--upgrade-package NAME`` moves one. The resolver is uv (pinned in the lock; installed into
the running environment when missing).
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
REQUIREMENTS = ROOT / "requirements"
LOCK = REQUIREMENTS / "lock.txt"
LOWEST = REQUIREMENTS / "lowest.txt"
#: the oldest Python procflow supports (pyproject's requires-python)
PYTHON_FLOOR = "3.10"
EXTRAS = ("embedded", "dashboard")


def uv() -> str:
    """The uv next to this interpreter, installed at the lock's version when missing."""
    here = Path(sys.executable).parent / "uv"
    if here.exists():
        return str(here)
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", "-c", str(LOCK), "uv"], check=True
    )
    found = shutil.which("uv", path=str(Path(sys.executable).parent))
    if found is None:
        raise SystemExit("scripts/lock.py: uv did not install")
    return found


def compile_lock(
    output: Path, inputs: list[str], extra: list[str], header: str, env_note: str
) -> None:
    command = [
        uv(),
        "pip",
        "compile",
        "--quiet",
        "--universal",
        "--python-version",
        PYTHON_FLOOR,
        "--no-header",
        "--output-file",
        str(output),
        "pyproject.toml",
        *(f"--extra={name}" for name in EXTRAS),
        *inputs,
        *extra,
    ]
    subprocess.run(command, cwd=ROOT, check=True)
    body = output.read_text()
    refresh = "# Refresh: .venv/bin/python scripts/lock.py (requirements/README.md)"
    output.write_text(f"# {header}\n# {env_note}\n{refresh}\n{body}")


def tool_pins(names: list[str]) -> str:
    """The lock's lines for the given packages (every marker variant)."""
    wanted = {name.lower() for name in names}
    lines = []
    for line in LOCK.read_text().splitlines():
        match = re.match(r"([A-Za-z0-9_.\-]+)==", line)
        if match and match.group(1).lower() in wanted:
            lines.append(line)
    return "\n".join(lines) + "\n"


def direct_names(path: Path) -> list[str]:
    names = []
    for line in path.read_text().splitlines():
        requirement = line.split("#", 1)[0].strip()
        if requirement:
            names.append(re.split(r"[\[<>=!~; ]", requirement, maxsplit=1)[0])
    return names


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0])
    parser.add_argument("--upgrade", action="store_true", help="every package to its newest")
    parser.add_argument("--upgrade-package", action="append", default=[], metavar="NAME")
    args = parser.parse_args(argv)
    moves = ["--upgrade"] if args.upgrade else []
    moves += [f"--upgrade-package={name}" for name in args.upgrade_package]
    ins = [f"requirements/{name}.in" for name in ("test", "docs", "tools")]
    compile_lock(
        LOCK,
        ins,
        moves,
        "Every package the test, lint, docs and tooling environments install, pinned.",
        "Inputs: pyproject.toml (extras embedded, dashboard), requirements/*.in.",
    )
    # lowest: procflow's own ranges at their floor, the test tools as locked
    pins = REQUIREMENTS / "locked-tools.txt"  # a fixed name: the lock's comments cite it
    pins.write_text(tool_pins(direct_names(REQUIREMENTS / "test.in")))
    try:
        compile_lock(
            LOWEST,
            ["requirements/test.in"],
            ["--resolution=lowest-direct", "-c", "requirements/locked-tools.txt"],
            "procflow's dependencies at the lowest versions its ranges allow (tox -e lowest).",
            "The test tools (requirements/test.in) at their versions in lock.txt.",
        )
    finally:
        pins.unlink()
    for path in (LOCK, LOWEST):
        count = sum(1 for line in path.read_text().splitlines() if "==" in line[:80])
        print(f"{path.relative_to(ROOT)}: {count} pins")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
