"""The README's test command: ``python3 scripts/test.py [TOX ARGS…]``.

Runs the whole suite (lint, ``mypy --strict``, unit, integration, process, interop, dashboard
and chaos tests, the docs build) on a fresh machine with nothing installed by hand, and is what
``.ci/run`` calls. In order:

1. The system's programs the tests drive — Node.js with npm (the interop tests run the
   TypeScript library), openssl (the TLS test's certificate), Chromium and its driver (the
   dashboard's browser tests), and ensurepip (``python3 -m venv`` on Debian/Ubuntu) — are
   installed from the system's packages when missing (apt-get, as root or with sudo that needs
   no password). Where that is not possible the script stops with one line naming what to
   install and why: no test is skipped because a program is missing.
2. A virtual environment ``.venv`` in the clone (the system Python may be externally managed,
   PEP 668) gets tox at the version pinned in ``requirements/lock.txt``.
3. ``.venv/bin/python -m tox`` runs, with any arguments given here (``-e lint``, ``-e py --
   tests/unit``). Every tox environment installs exactly the versions of requirements/lock.txt.

A Redis 7 server is not a system requirement: tox fetches Debian's into ``.tox/`` when none is
on PATH (scripts/fetch_redis.py).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
VENV = ROOT / ".venv"
LOCK = ROOT / "requirements" / "lock.txt"

#: (program or check, Debian package, why the tests need it)
PROGRAMS = (
    ("node", "nodejs", "the interop tests run the TypeScript library @guildxyz/queues"),
    ("npm", "npm", "the interop tests install @guildxyz/queues with npm ci"),
    ("openssl", "openssl", "the TLS test makes its certificate with openssl"),
    ("chromium", "chromium", "the dashboard's browser tests drive headless Chromium"),
    ("chromedriver", "chromium-driver", "selenium drives Chromium through chromedriver"),
)


def _has_ensurepip() -> bool:
    probe = subprocess.run(
        [sys.executable, "-c", "import ensurepip"], capture_output=True, check=False
    )
    return probe.returncode == 0


def missing_packages() -> list[tuple[str, str]]:
    """The system packages to install, each with the reason."""
    missing = [(pkg, why) for prog, pkg, why in PROGRAMS if shutil.which(prog) is None]
    if not VENV.exists() and not _has_ensurepip():
        version = f"python{sys.version_info.major}.{sys.version_info.minor}"
        missing.append((f"{version}-venv", "python3 -m venv needs ensurepip"))
    return missing


def _apt_prefix() -> list[str] | None:
    """How to run apt-get here: directly as root, through sudo that asks no password, or not
    at all (None)."""
    if shutil.which("apt-get") is None:
        return None
    if os.geteuid() == 0:
        return []
    if shutil.which("sudo") and subprocess.run(["sudo", "-n", "true"], check=False).returncode == 0:
        return ["sudo", "-n"]
    return None


def install_system_packages() -> int:
    missing = missing_packages()
    if not missing:
        return 0
    names = [pkg for pkg, _ in missing]
    prefix = _apt_prefix()
    if prefix is None:
        reasons = "; ".join(f"{pkg}: {why}" for pkg, why in missing)
        print(
            f"scripts/test.py: install {' '.join(names)} first (e.g. sudo apt-get install"
            f" {' '.join(names)}) — {reasons}",
            file=sys.stderr,
        )
        return 2
    print(f"scripts/test.py: installing {' '.join(names)} from the system's packages", flush=True)
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for command in (["apt-get", "update", "-qq"], ["apt-get", "install", "-y", "-qq", *names]):
        if subprocess.run([*prefix, *command], env=env, check=False).returncode != 0:
            print(f"scripts/test.py: {' '.join(command)} failed", file=sys.stderr)
            return 2
    return 0


def main(argv: list[str]) -> int:
    if (code := install_system_packages()) != 0:
        return code
    python = VENV / "bin" / "python"
    if not python.exists():
        subprocess.run([sys.executable, "-m", "venv", str(VENV)], check=True)
    # the lock pins tox and everything it depends on (pip reads the lock's markers)
    env = {**os.environ, "PIP_CONSTRAINT": str(LOCK)}
    install = [str(python), "-m", "pip", "install", "-q", "--disable-pip-version-check", "tox"]
    subprocess.run(install, env=env, check=True)
    os.chdir(ROOT)
    return subprocess.run([str(python), "-m", "tox", *argv], check=False).returncode


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
