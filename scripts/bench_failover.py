"""Jobs lost in a failover, without and with ``durable=1``.

    python scripts/bench_failover.py [--trials 5] [--batch 50] [--lag 0.2]

Each trial starts a master and a replica (``--replicaof``) on loopback ports of their own. A
producer thread creates jobs in batches of ``--batch`` on the master, as fast as it can, and
notes every id whose ``create_jobs`` returned (acknowledged); the main thread SIGKILLs the
master while it does (after the producer has had ~0.3 s, somewhere mid-stream), promotes the
replica (``REPLICAOF NO ONE``, what a sentinel would do) and counts the acknowledged jobs the
replica does not have. Without ``durable`` an acknowledged write the master had not yet sent
to the replica is lost with it; with ``durable=1`` every write waits for the replica in the
same round trip (``WAIT 1 1000``), so none should be. On loopback the replica is so close
behind that a SIGKILL rarely catches a write it lacks; so each mode also runs with the replica
lagging: SIGSTOPped ``--lag`` seconds before the kill (a slow link or a busy replica), resumed
after it. Prints acknowledged and lost jobs per trial, and their totals. Not run in CI.
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import redis

from procflow import Flow, QueueSpec
from procflow.errors import ProcflowError
from procflow.server import RedisServer


def trial(durable: bool, batch: int, lag: float) -> tuple[int, int]:
    """One failover: (jobs acknowledged, of them not on the promoted replica)."""
    no_disk = ("--save", "", "--appendonly", "no")
    master = RedisServer(extra_args=no_disk).start()
    replica = RedisServer(extra_args=(*no_disk, "--replicaof", "127.0.0.1", str(master.port)))
    replica.start()
    try:
        link = redis.Redis(port=replica.port)
        deadline = time.monotonic() + 20
        while link.info("replication").get("master_link_status") != "up":
            if time.monotonic() > deadline:
                raise RuntimeError("the replica never synced")
            time.sleep(0.05)  # polling the replica's state
        url = master.url + ("?durable=1" if durable else "")
        flow = Flow("failover", [QueueSpec("w")], redis_url=url)
        acked: list[str] = []
        stop = threading.Event()

        def produce() -> None:
            n = 0
            while not stop.is_set():
                try:
                    acked.extend(flow.create_jobs([{"n": n + i} for i in range(batch)]))
                except ProcflowError:
                    return  # the master is gone
                n += batch

        producer = threading.Thread(target=produce)
        producer.start()
        time.sleep(0.3)  # let the stream run: the kill comes somewhere in the middle of it
        assert master.process is not None and replica.process is not None
        if lag:
            replica.process.send_signal(signal.SIGSTOP)
            time.sleep(lag)  # the replica falls behind by this much
        master.process.send_signal(signal.SIGKILL)
        stop.set()
        if lag:
            replica.process.send_signal(signal.SIGCONT)
        producer.join(30)
        link.execute_command("REPLICAOF", "NO", "ONE")
        have = link.pipeline(transaction=False)
        for job_id in acked:
            have.exists(f"job:failover:{job_id}")
        lost = sum(1 for there in have.execute() if not there)
        flow.disconnect()
        return len(acked), lost
    finally:
        replica.stop()
        master.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=5)
    parser.add_argument("--batch", type=int, default=50)
    parser.add_argument("--lag", type=float, default=0.2)
    args = parser.parse_args()
    print(f"{'replica':>8} {'durable':>8} {'trial':>5} {'acknowledged':>13} {'lost':>6}")
    for lag in (0.0, args.lag):
        where = f"{lag:g} s" if lag else "in step"
        for durable in (False, True):
            total_acked = total_lost = 0
            for n in range(args.trials):
                acked, lost = trial(durable, args.batch, lag)
                total_acked += acked
                total_lost += lost
                print(f"{where:>8} {durable!s:>8} {n + 1:>5} {acked:>13,} {lost:>6,}")
            print(f"{where:>8} {durable!s:>8} {'all':>5} {total_acked:>13,} {total_lost:>6,}")


if __name__ == "__main__":
    main()
