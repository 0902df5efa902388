"""Make a Redis 7 server available to the test suite without installing anything system-wide.

Usage: python scripts/fetch_redis.py DIR

If ``$PROCFLOW_REDIS_SERVER`` is set or ``redis-server`` is on PATH, nothing is done. Otherwise,
on a Debian-family system, Debian's ``redis-tools`` package (and the two libraries it needs
beyond a base system) are downloaded with ``apt-get download`` (no root needed) and unpacked
into DIR, and DIR/bin/redis-server is written as a small launcher. tox puts DIR/bin on PATH.
Anything else is a clear failure: the suite never skips a server it was asked to test.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

PACKAGES = ("redis-tools", "liblzf1", "libjemalloc2")


def main(target: str) -> int:
    if os.environ.get("PROCFLOW_REDIS_SERVER"):
        print(f"fetch_redis: using $PROCFLOW_REDIS_SERVER={os.environ['PROCFLOW_REDIS_SERVER']}")
        return 0
    root = Path(target)
    launcher = root / "bin" / "redis-server"
    found = shutil.which("redis-server")
    if found and Path(found).resolve() != launcher.resolve():
        print(f"fetch_redis: using {found}")
        return 0
    if launcher.exists():
        print(f"fetch_redis: using {launcher}")
        return 0
    if not shutil.which("apt-get") or not shutil.which("dpkg-deb"):
        print(
            "fetch_redis: redis-server is not installed and this is not a Debian-family system;"
            " install Redis 7 (e.g. your package manager's redis) or set PROCFLOW_REDIS_SERVER",
            file=sys.stderr,
        )
        return 1
    downloads = root / "debs"
    unpacked = root / "root"
    downloads.mkdir(parents=True, exist_ok=True)
    subprocess.run(["apt-get", "download", *PACKAGES], cwd=downloads, check=True)
    for deb in downloads.glob("*.deb"):
        subprocess.run(["dpkg-deb", "-x", str(deb), str(unpacked)], check=True)
    binary = unpacked / "usr" / "bin" / "redis-check-rdb"
    libs = [str(p) for p in (unpacked / "usr" / "lib").glob("*-linux-gnu")]
    launcher.parent.mkdir(parents=True, exist_ok=True)
    # Debian's redis-server is redis-check-rdb started under the name redis-server
    launcher.write_text(
        "#!/usr/bin/env bash\n"
        f'export LD_LIBRARY_PATH="{":".join(libs)}${{LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}}"\n'
        f'exec -a redis-server "{binary}" "$@"\n'
    )
    launcher.chmod(0o755)
    version = subprocess.run(
        [str(launcher), "--version"], capture_output=True, text=True, check=False
    )
    print(f"fetch_redis: {version.stdout.strip() or version.stderr.strip()} at {launcher}")
    return version.returncode


if __name__ == "__main__":
    sys.exit(main(sys.argv[1] if len(sys.argv) > 1 else ".redis-server"))
