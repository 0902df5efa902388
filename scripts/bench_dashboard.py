"""Does a stage page cost the same for 10 waiting jobs as for a million? It should: a page is
one LLEN and one LRANGE of 50 ids, then those 50 hashes.

    python scripts/bench_dashboard.py [--jobs 1000000] [--requests 25] [--server PATH]

Starts a private server in a temporary directory (never the machine's shared Redis),
registers two one-stage flows, gives stage ``tens`` 10 real jobs and stage ``millions`` 1,000
real jobs followed by bare ids pipelined with RPUSH up to ``--jobs``, serves
``procflow dashboard`` on a free port, and times over HTTP (one kept-alive connection) the
stage page (HTML, with its first page of jobs) and its JSON twin: the median and the 90th
percentile of ``--requests`` requests after three warm-up ones, at the head, the middle and
the tail of the long list. Not run in CI.
"""

from __future__ import annotations

import argparse
import http.client
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import urlsplit

import redis

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from procflow import Flow, QueueSpec
from procflow.ids import uuid7_batch
from procflow.server import RedisServer, find_server_binary
from procflow.store import keys
from procflow.store.registry import Registry

REAL_JOBS = 1000


def _bare(client: redis.Redis, key: str, count: int) -> None:
    """``count`` ids with no job hash, pipelined RPUSH of 1,000 at a time."""
    while count > 0:
        batch = uuid7_batch(min(count, 10_000))
        pipe = client.pipeline(transaction=False)
        for i in range(0, len(batch), 1000):
            pipe.rpush(key, *batch[i : i + 1000])
        pipe.execute()
        count -= len(batch)


def fill(url: str, total: int) -> None:
    """Stage ``tens``: 10 real jobs. Stage ``millions``: ``total`` ids, real jobs (hashes) at
    the head, in the middle and at the tail (where the timed pages are), bare ids between."""
    small = Flow("small", [QueueSpec("tens")], redis_url=url)
    big = Flow("big", [QueueSpec("millions")], redis_url=url)
    for flow in (small, big):
        Registry(flow.store).register(flow.name, flow.definition.describe())
    small.create_jobs([{"n": n, "note": "a real job"} for n in range(10)])
    client = redis.Redis.from_url(url)
    waiting = keys.waiting("millions")
    middle = total // 2
    real = [{"n": n, "note": "a real job"} for n in range(REAL_JOBS)]
    big.create_jobs(real)  # create_jobs appends (RPUSH): at 0 …
    _bare(client, waiting, middle - REAL_JOBS)
    big.create_jobs(real)  # … at total // 2 …
    _bare(client, waiting, total - middle - 2 * REAL_JOBS)
    big.create_jobs(real)  # … and at the tail
    assert client.llen(waiting) == total and client.llen(keys.waiting("tens")) == 10
    assert client.exists(keys.job("big", client.lindex(waiting, middle).decode()))
    client.close()
    small.disconnect()
    big.disconnect()


def timed(conn: http.client.HTTPConnection, path: str, requests: int) -> tuple[float, float]:
    """(median, 90th percentile) in milliseconds of GET ``path``."""
    samples = []
    for n in range(requests + 3):
        started = time.perf_counter()
        conn.request("GET", path)
        reply = conn.getresponse()
        body = reply.read()
        elapsed = (time.perf_counter() - started) * 1000
        assert reply.status == 200, (path, reply.status, body[:300])
        if n >= 3:
            samples.append(elapsed)
    samples.sort()
    return statistics.median(samples), samples[int(len(samples) * 0.9) - 1]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=1_000_000, help="waiting in the long stage")
    parser.add_argument("--requests", type=int, default=25, help="timed requests per row")
    parser.add_argument("--server", default=None, help="server binary (default: found)")
    args = parser.parse_args()
    with RedisServer(args.server or find_server_binary()) as server:
        started = time.perf_counter()
        fill(server.url, args.jobs)
        version = server.version().split(" sha=")[0]
        print(f"filled in {time.perf_counter() - started:.1f} s on {version}")
        command = [sys.executable, "-m", "procflow", "dashboard", "--port", "0"]
        proc = subprocess.Popen(
            [*command, "--redis-url", server.url],
            stdout=subprocess.PIPE,
            text=True,
        )
        try:
            assert proc.stdout is not None
            base = proc.stdout.readline().split(" on ", 1)[1].split()[0]
            conn = http.client.HTTPConnection(urlsplit(base).netloc, timeout=30)
            conn.connect()
            assert conn.sock is not None  # no Nagle delay between a request's writes
            conn.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            middle, last = args.jobs // 2, args.jobs - 50
            rows = [
                ("small · tens", 10, 0, 50),
                ("big · millions", args.jobs, 0, 10),
                ("big · millions", args.jobs, 0, 50),
                ("big · millions", args.jobs, middle, 50),
                ("big · millions", args.jobs, last, 50),
            ]
            header = ("stage", "waiting", "from", "rows", "html p50 ms", "html p90 ms")
            header += ("json p50 ms", "json p90 ms")
            lines = [header]
            for label, waiting, start, count in rows:
                flow, queue = label.split(" · ")
                query = f"?state=waiting&start={start}&count={count}"
                html = timed(conn, f"/flows/{flow}/stages/{queue}{query}", args.requests)
                api = timed(conn, f"/api/flows/{flow}/stages/{queue}{query}", args.requests)
                lines.append(
                    (
                        label,
                        f"{waiting:,}",
                        f"{start:,}",
                        str(min(count, waiting)),
                        *(f"{v:.1f}" for v in (*html, *api)),
                    )
                )
            conn.close()
        finally:
            proc.terminate()
            proc.wait(30)
    widths = [max(len(row[i]) for row in lines) for i in range(len(header))]
    for n, row in enumerate(lines):
        print(
            "  ".join(
                c.ljust(w) if i == 0 else c.rjust(w)
                for i, (c, w) in enumerate(zip(row, widths, strict=True))
            )
        )
        if n == 0:
            print("  ".join("-" * w for w in widths))
    return 0


if __name__ == "__main__":
    sys.exit(main())
