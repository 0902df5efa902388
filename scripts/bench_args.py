"""What a script's arguments cost: positional ARGV against named options packed in one
argument (as BullMQ packs them), beside the real per-job calls for scale.

    python scripts/bench_args.py [--calls 20000] [--server PATH]

Rows:
  complete.lua     the real per-job call (complete one job, lease the next), prefetch 1
  fail.lua         the real failed attempt (a retry at once), as this tree's fail.lua takes
                   its arguments (run the script on an older tree to compare)
  args:positional  a script that only reads 18 positional ARGV (fail.lua's before its
                   named options) into locals
  args:cjson       the same 18 values as one JSON object, cjson.decode'd (json.dumps per call)
  args:cmsgpack    the same as one MessagePack map, cmsgpack.unpack'ed (constant part packed
                   once, as a session packs its constant head)
Per row: client wall time per call (median of 5 rounds, one connection, no pipelining) and
the server's time per call (INFO commandstats, cmdstat_evalsha usec_per_call). A private
server is started here (never the machine's shared Redis). Not run in CI.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from procflow import Flow, QueueSpec
from procflow.failures import FailureRecord, RetryPolicy
from procflow.server import RedisServer
from procflow.store.session import StageSession
from procflow.store.wire import Script, Wire

ROUNDS = 5
NAMES = [
    "jobPrefix",
    "lockPrefix",
    "queueJson",
    "attemptsField",
    "errorsField",
    "leaseField",
    "record",
    "message",
    "maxAttempts",
    "doneChannel",
    "pendingField",
    "kind",
    "stallsField",
    "maxStalls",
    "pairs",
]
POSITIONAL = Script(
    "bench_positional",
    "local a = {}\nfor i = 1, 18 do a[i] = ARGV[i] end\n"
    "local n = tonumber(ARGV[12]) + tonumber(ARGV[17]) + tonumber(ARGV[18])\n"
    "return #a[10] + n",
)
CJSON = Script(
    "bench_cjson",
    "local o = cjson.decode(ARGV[4])\n"
    "local n = tonumber(o.maxAttempts) + tonumber(o.maxStalls) + tonumber(o.pairs)\n"
    "return #o.record + n + #ARGV[1] + #ARGV[2] + #ARGV[3]",
)
CMSGPACK = Script(
    "bench_cmsgpack",
    "local o = cmsgpack.unpack(ARGV[4])\nlocal p = cmsgpack.unpack(ARGV[5])\n"
    "local n = tonumber(o.maxAttempts) + tonumber(o.maxStalls) + tonumber(p.pairs)\n"
    "return #p.record + n + #ARGV[1] + #ARGV[2] + #ARGV[3]",
)


def server_usec(wire: Wire, what: str = "usec_per_call") -> float:
    """From INFO commandstats: EVALSHA's ``usec_per_call`` (or total ``usec``) since the
    last CONFIG RESETSTAT."""
    info = wire.call("INFO", "commandstats").decode()
    for line in info.splitlines():
        if line.startswith("cmdstat_evalsha:"):
            fields = dict(kv.split("=") for kv in line.split(":", 1)[1].split(","))
            return float(fields[what])
    return 0.0


def measure(wire: Wire, calls: int, one: Callable[[int], Any]) -> tuple[float, float]:
    """(client µs per call, server µs per call), median over the rounds."""
    walls, servers = [], []
    for _ in range(ROUNDS):
        wire.call("CONFIG", "RESETSTAT")
        start = time.perf_counter()
        for n in range(calls):
            one(n)
        walls.append((time.perf_counter() - start) / calls * 1e6)
        servers.append(server_usec(wire))
    return statistics.median(walls), statistics.median(servers)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--calls", type=int, default=20_000)
    parser.add_argument("--server", default=None)
    args = parser.parse_args()
    calls = args.calls
    rows: list[tuple[str, float, float]] = []
    with RedisServer(args.server) as server:
        flow = Flow("B", [QueueSpec("q", max_attempts=10**9)], [], redis_url=server.url)
        flow.connect()
        flow.create_jobs([{"x": n} for n in range(calls * (ROUNDS + 1) + 10)])
        stage = flow.stage("q")
        session = StageSession(Wire(server.settings), stage.keys, fields=["x"], lock_ms=60_000)
        session.connect()
        tokens = iter(f"n|1|1.00|1|{n}" for n in range(10**9))
        held = session.lease(next(tokens))
        assert held is not None

        def complete(_: int) -> None:
            nonlocal held
            token = next(tokens)
            assert held is not None
            _, following = session.complete(held.id, held.token, [(b"y", b"1")], "", token)
            held = following[0]

        rows.append(("complete.lua", *measure(session.wire, calls, complete)))

        record = FailureRecord.in_worker(
            "ValueError: bad", "exception", attempt=1, worker="q#0", pid=1
        )
        policy = RetryPolicy(10**9, [0] * 4, 3)
        leases: list[Any] = []

        def fail_all() -> tuple[float, float]:
            """Fail ``calls`` leased jobs (retried at once), 50 held at a time (fail.lua's
            LREM walks the processing list); returns the seconds the fail calls took, and
            the server's µs in them."""
            spent = usec = 0.0
            for _ in range(0, calls, 50):
                leases[:] = [session.lease(next(tokens)) for _ in range(50)]
                session.wire.call("CONFIG", "RESETSTAT")
                start = time.perf_counter()
                for lease in leases:
                    session.fail(lease.id, lease.token, record, policy)
                spent += time.perf_counter() - start
                usec += server_usec(session.wire, "usec")
            return spent, usec

        walls, servers = [], []
        for _ in range(ROUNDS):
            spent, usec = fail_all()
            walls.append(spent / calls * 1e6)
            servers.append(usec / calls)
        rows.append(("fail.lua", statistics.median(walls), statistics.median(servers)))

        wire = session.wire
        for s in (POSITIONAL, CJSON, CMSGPACK):
            wire.load(s)
        k = stage.keys
        constant = {
            "jobPrefix": k.job_prefix,
            "lockPrefix": k.lock_prefix,
            "queueJson": k.queue_json,
            "attemptsField": k.attempts_field,
            "errorsField": k.errors_field,
            "leaseField": k.lease_field,
            "maxAttempts": 3,
            "doneChannel": k.done_channel,
            "pendingField": "",
            "stallsField": k.stalls_field,
            "maxStalls": 3,
        }

        def per_call() -> dict[str, Any]:
            return {
                "record": record.record_json(),
                "message": record.message_json(),
                "kind": record.kind,
                "pairs": 0,
            }

        def positional(n: int) -> None:
            c, p = constant, per_call()
            wire.evalsha(
                POSITIONAL,
                (k.processing,),
                (
                    "id",
                    "tok",
                    "token",
                    c["jobPrefix"],
                    c["lockPrefix"],
                    c["queueJson"],
                    c["attemptsField"],
                    c["errorsField"],
                    c["leaseField"],
                    p["record"],
                    p["message"],
                    c["maxAttempts"],
                    c["doneChannel"],
                    c["pendingField"],
                    p["kind"],
                    c["stallsField"],
                    c["maxStalls"],
                    p["pairs"],
                ),
            )

        def cjson(n: int) -> None:
            options = json.dumps({**constant, **per_call()}, separators=(",", ":"))
            wire.evalsha(CJSON, (k.processing,), ("id", "tok", "token", options))

        packed_constant = _msgpack(constant)

        def cmsgpack(n: int) -> None:
            wire.evalsha(
                CMSGPACK,
                (k.processing,),
                ("id", "tok", "token", packed_constant, _msgpack(per_call())),
            )

        for name, one in (
            ("args:positional", positional),
            ("args:cjson", cjson),
            ("args:cmsgpack", cmsgpack),
        ):
            rows.append((name, *measure(wire, calls, one)))
        session.close()
        flow.disconnect()
    print(f"{'call':<18}{'client µs/call':>16}{'server µs/call':>16}")
    for name, wall, srv in rows:
        print(f"{name:<18}{wall:>16.1f}{srv:>16.2f}")


def _msgpack(value: dict[str, Any]) -> bytes:
    """A flat map of text and small ints as MessagePack (enough for this benchmark)."""
    out = bytearray([0x80 | len(value)] if len(value) < 16 else [0xDE, 0, len(value)])
    for key, v in value.items():
        for item in (key, v):
            if isinstance(item, int):
                out += bytes([item]) if 0 <= item < 128 else b"\xd3" + item.to_bytes(8, "big")
            else:
                data = str(item).encode()
                if len(data) < 32:
                    out += bytes([0xA0 | len(data)]) + data
                else:
                    out += b"\xda" + len(data).to_bytes(2, "big") + data
    return bytes(out)


if __name__ == "__main__":
    main()
