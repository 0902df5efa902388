"""The dashboard's screenshots in docs/images/: overview, flow, stage and job pages.

    python scripts/screenshots.py [--out docs/images] [--no-history]

Starts a private server (never the machine's shared Redis), runs a small "orders" flow
(validate → enrich, fanning out to geo and credit → ship) under a real supervisor with jobs
failing on purpose, serves ``procflow dashboard`` on a free port and photographs its pages
with headless Chromium (/usr/bin/chromium, /usr/bin/chromedriver) at 1280x800. Unless
``--no-history``, the hour before is seeded into the stages' per-minute counts (so the
throughput chart has something to show); the rest is what the flow really did.
"""

from __future__ import annotations

import argparse
import math
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import redis
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from procflow import Flow, QueueSpec
from procflow.server import RedisServer, find_server_binary
from procflow.store import keys

ROOT = Path(__file__).resolve().parents[1]


def orders(url: str) -> Flow:
    flow = Flow(
        "orders",
        [
            QueueSpec("validate", next_queue="enrich", attributes_to_get=["amount", "customer"]),
            QueueSpec(
                "enrich",
                next_queue="ship",
                children=[
                    QueueSpec("geo", attributes_to_get=["customer"]),
                    QueueSpec("credit", attributes_to_get=["amount"], max_attempts=2),
                ],
            ),
            QueueSpec("ship", attributes_to_get=["amount"]),
        ],
        lookup_attributes=["customer"],
        redis_url=url,
    )

    def validate(job: dict[str, Any]) -> dict[str, Any]:
        if job["amount"] <= 0:
            raise ValueError(f"amount must be positive, got {job['amount']}")
        return {
            "valid": True,
            "children:enrich:params": [
                {"childName": "geo", "customer": job["customer"]},
                {"childName": "credit", "amount": job["amount"]},
            ],
        }

    def credit(job: dict[str, Any]) -> dict[str, Any]:
        if job["amount"] == 666:
            os._exit(3)  # a worker dying mid-job: the supervisor records a crash
        return {"score": 700 + job["amount"] % 100}

    def ship(job: dict[str, Any]) -> dict[str, Any]:
        time.sleep(0.25)  # the job's own work: a slow stage, so jobs wait for it
        return {"trackingNo": f"TRK{job['amount']:06d}"}

    flow.create_workers("validate", validate, count=2)
    flow.create_parent_workers("enrich", count=1)
    flow.create_child_workers("enrich", "geo", lambda j: {"region": "eu-west"}, count=2)
    flow.create_child_workers("enrich", "credit", credit, count=2)
    flow.create_workers("ship", ship, count=1)
    return flow


def seed_history(url: str, flow: Flow) -> None:
    """Per-minute counts for the hour before now, in the stats hashes the scripts keep."""
    client = redis.Redis.from_url(url)
    now = int(client.time()[0]) // 60
    rng = random.Random(7)
    pipe = client.pipeline()
    for name in flow.stages:
        for minute in range(now - 60, now):
            wave = 70 + 50 * math.sin(minute / 6)
            pipe.hincrby(keys.stats("orders", name), f"c:{minute}", int(wave + rng.random() * 20))
            if rng.random() < 0.2:
                pipe.hincrby(keys.stats("orders", name), f"f:{minute}", rng.randint(1, 4))
    pipe.execute()
    client.close()


def driver() -> webdriver.Chrome:
    options = webdriver.ChromeOptions()
    options.binary_location = "/usr/bin/chromium"
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage"):
        options.add_argument(arg)
    options.add_argument("--window-size=1280,800")
    options.add_argument("--force-device-scale-factor=1")
    browser = webdriver.Chrome(options=options, service=Service("/usr/bin/chromedriver"))
    size = {"width": 1280, "height": 800, "deviceScaleFactor": 1, "mobile": False}
    browser.execute_cdp_cmd("Emulation.setDeviceMetricsOverride", size)
    return browser


def shoot(browser: webdriver.Chrome, url: str, ready: str, path: Path) -> None:
    browser.get(url)
    WebDriverWait(browser, 20).until(lambda b: b.find_elements(By.CSS_SELECTOR, ready))
    WebDriverWait(browser, 20).until(
        lambda b: "live" in b.find_element(By.ID, "live").get_attribute("class")
    )
    browser.save_screenshot(str(path))
    print(f"wrote {path.relative_to(ROOT) if path.is_relative_to(ROOT) else path}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "images")
    parser.add_argument("--no-history", action="store_true", help="no seeded past hour")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    with RedisServer(find_server_binary()) as server:
        flow = orders(server.url)
        if not args.no_history:
            seed_history(server.url, flow)
        with flow.start_all(node_id="node-a", log_level="ERROR") as sup:
            customers = ["acme", "globex", "initech", "umbrella"]
            amounts = [*range(10, 130), -5, 0, 666, -1]
            jobs = [
                {"amount": a, "customer": customers[i % 4], "note": f"order {i}"}
                for i, a in enumerate(amounts)
            ]
            ids = flow.create_jobs(jobs)
            failed, crashed = ids[amounts.index(-5)], ids[amounts.index(666)]
            sup.wait([failed], timeout=60)
            command = [sys.executable, "-m", "procflow", "dashboard", "--port", "0"]
            proc = subprocess.Popen(
                [*command, "--redis-url", server.url],
                stdout=subprocess.PIPE,
                text=True,
            )
            try:
                assert proc.stdout is not None
                base = proc.stdout.readline().split(" on ", 1)[1].split()[0].rstrip("/")
                browser = driver()
                try:
                    shoot(browser, base + "/", "tr[data-flow]", args.out / "dashboard-overview.png")
                    shoot(
                        browser,
                        base + "/flows/orders",
                        "tr[data-worker]",
                        args.out / "dashboard-flow.png",
                    )
                    shoot(
                        browser,
                        base + "/flows/orders/stages/ship?state=waiting&count=20",
                        "tr[data-job]",
                        args.out / "dashboard-stage.png",
                    )
                    sup.wait([crashed], timeout=120)
                    (child,) = [
                        c
                        for c in flow.get_jobs([crashed], resolve_children=True)[0][
                            "children:enrich:jobs"
                        ]
                        if c.get("failed")
                    ]
                    shoot(
                        browser,
                        f"{base}/jobs/{child['id']}?flow=orders",
                        "#errors tbody tr",
                        args.out / "dashboard-job.png",
                    )
                finally:
                    browser.quit()
            finally:
                proc.send_signal(signal.SIGTERM)
                proc.wait(30)
        flow.disconnect()
    return 0


if __name__ == "__main__":
    sys.exit(main())
