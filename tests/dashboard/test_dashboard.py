"""The dashboard in a real browser: ``procflow dashboard`` served by uvicorn in a subprocess,
headless Chromium (the system's package) driven by selenium, flows run by real supervisors.

A missing Chromium or chromedriver is a failure, never a skip. Nothing here sleeps to
synchronise: the browser waits (``WebDriverWait``) for what the page shows to change.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest
import redis
from selenium import webdriver
from selenium.common.exceptions import (
    NoAlertPresentException,
    NoSuchElementException,
    StaleElementReferenceException,
)
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import Select, WebDriverWait

from procflow import Flow, QueueSpec
from procflow.server import RedisServer
from tests.conftest import server_binary, wait_until
from tests.helpers import lazy_client
from tests.process.test_cli import Output

ROOT = Path(__file__).resolve().parents[2]
CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
XSS = "<script>alert(1)</script>"
DASH = "\u2013"  # the en dash of "1-50 of 120"
pytestmark = pytest.mark.usefixtures("no_leaks")


# -- the flow ------------------------------------------------------------------------------


def shop(url: str) -> Flow:
    """check → charge (fan-out to card). check refuses 13, and fails while ``broken`` is set."""
    return Flow(
        "shop",
        [
            QueueSpec("check", next_queue="charge", attributes_to_get=["amount"]),
            QueueSpec("charge", children=[QueueSpec("card", attributes_to_get=["amount"])]),
        ],
        lookup_attributes=["user"],
        redis_url=url,
    )


def with_workers(flow: Flow, url: str) -> Flow:
    get = lazy_client(url)

    def check(job: dict[str, Any]) -> dict[str, Any]:
        if job["amount"] == 13:
            raise ValueError("thirteen is refused")
        if get().exists("broken"):
            raise RuntimeError("the card service is down")
        return {"checked": True}

    flow.create_workers("check", check, count=1)
    flow.create_parent_workers("charge", count=1)
    flow.create_child_workers("charge", "card", lambda job: {"paid": job["amount"]}, count=1)
    return flow


def order(amount: int, user: int, **extra: Any) -> dict[str, Any]:
    return {
        "amount": amount,
        "user": user,
        "children:charge:params": [{"childName": "card", "amount": amount}],
        **extra,
    }


def failed_job(url: str) -> str:
    """A job that failed in check, left by a supervisor that ran and stopped (the flow stays
    registered)."""
    flow = with_workers(shop(url), url)
    with flow.start_all(node_id="node-a") as sup:
        (job_id,) = flow.create_jobs([order(13, 1)])
        sup.wait([job_id], timeout=60)
    flow.disconnect()
    return job_id


# -- the dashboard and the browser ------------------------------------------------------------


class Dashboard:
    """``procflow dashboard`` on a free loopback port, in a subprocess."""

    def __init__(self, url: str, *args: str, env: dict[str, str] | None = None) -> None:
        command = [sys.executable, "-m", "procflow", "dashboard", "--redis-url", url]
        self.proc = subprocess.Popen(
            [*command, "--port", "0", *args],
            cwd=ROOT,
            env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})},
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        self.output = Output(self.proc)
        line = wait_until(  # after any warning it prints first (an evicting Redis, say)
            lambda: (
                any(" on http://" in x for x in self.output.lines) or self.proc.poll() is not None
            ),
            timeout=30,
            what="the dashboard to start",
        )
        found = re.search(r" on (http://\S+?)/ ", "".join(self.output.lines))
        assert found, f"the dashboard did not start: {self.output.text()} {line}"
        self.base = found.group(1)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(20)
        finally:
            self.proc.kill()
        assert self.proc.returncode == 0, self.output.text()
        assert "procflow dashboard stopped" in self.output.text()


@pytest.fixture
def start_dashboard(redis_url: str) -> Iterator[Callable[..., Dashboard]]:
    started: list[Dashboard] = []

    def start(*args: str, env: dict[str, str] | None = None) -> Dashboard:
        started.append(Dashboard(redis_url, *args, env=env))
        return started[-1]

    yield start
    for dashboard in started:
        dashboard.stop()


@pytest.fixture
def browser() -> Iterator[webdriver.Chrome]:
    for path in (CHROMIUM, CHROMEDRIVER):
        if not os.access(path, os.X_OK):
            pytest.fail(
                f"{path} is missing: the dashboard tests need a real browser "
                "(apt-get install chromium chromium-driver)"
            )
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage"):
        options.add_argument(arg)
    options.add_argument("--window-size=1280,900")
    driver = webdriver.Chrome(options=options, service=Service(CHROMEDRIVER))
    try:
        yield driver
    finally:
        driver.quit()


def wait_for(browser: webdriver.Chrome, condition: Callable[[], Any], what: str) -> Any:
    """Wait for what the page shows (elements may be redrawn while we look)."""
    ignored = (NoSuchElementException, StaleElementReferenceException)
    return WebDriverWait(browser, 20, ignored_exceptions=ignored).until(
        lambda _: condition(), message=f"waiting for {what}"
    )


def text_of(browser: webdriver.Chrome, css: str) -> str:
    return browser.find_element(By.CSS_SELECTOR, css).text


def wait_text(browser: webdriver.Chrome, css: str, expected: str) -> None:
    wait_for(browser, lambda: text_of(browser, css) == expected, f"{css} to read {expected!r}")


def click(browser: webdriver.Chrome, css: str) -> None:
    """Click ``css`` once it is there (found again if it was redrawn meanwhile)."""

    def clicked() -> bool:
        browser.find_element(By.CSS_SELECTOR, css).click()
        return True

    wait_for(browser, clicked, f"{css} to click")


def http(
    url: str, body: Any = None, headers: dict[str, str] | None = None
) -> tuple[int, dict[str, Any] | str]:
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url, data=data, headers=headers or {})
    if data is not None:
        request.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(request, timeout=10) as reply:
            status, raw = reply.status, reply.read().decode()
    except urllib.error.HTTPError as exc:
        status, raw = exc.code, exc.read().decode()
    try:
        return status, json.loads(raw)
    except ValueError:
        return status, raw


def csrf_of(page: str) -> str:
    found = re.search(r'name="csrf-token" content="([0-9a-f]+)"', page)
    assert found, page[:500]
    return found.group(1)


# -- the tests -------------------------------------------------------------------------------


def test_the_overview_and_the_flow_page_follow_a_running_flow(
    redis_url: str, start_dashboard: Callable[..., Dashboard], browser: webdriver.Chrome
) -> None:
    flow = with_workers(shop(redis_url), redis_url)
    with flow.start_all(node_id="node-a") as sup:
        dashboard = start_dashboard()
        browser.get(dashboard.base + "/")
        row = 'tr[data-flow="shop"]'
        wait_text(browser, f'{row} td[data-col="workers"]', "3")
        wait_text(browser, f'{row} td[data-col="failed"]', "0")
        browser.execute_script("window.notReloaded = true")
        (refused,) = flow.create_jobs([order(13, 1)])
        wait_text(browser, f'{row} td[data-col="failed"]', "1")  # live: no reload
        assert browser.execute_script("return window.notReloaded") is True
        wait_text(browser, f'{row} td[data-col="eta"]', "0 s")  # nothing pending
        sup.wait(flow.create_jobs([order(2, 2), order(4, 2)]), timeout=60)

        click(browser, f"{row} a")
        wait_text(browser, "h1 .name", "shop")
        # the graph: a box per stage, with the child below its parent, and live depths
        for stage in ("check", "charge", "charge:card"):
            wait_for(
                browser,
                lambda s=stage: browser.find_element(By.CSS_SELECTOR, f'#graph [data-stage="{s}"]'),
                f"the graph's box of {stage}",
            )
        assert "1 failed" in text_of(browser, '#graph a[data-stage="check"]')
        wait_text(browser, 'tr[data-stage="check"] td[data-col="failed"]', "1")
        wait_text(browser, 'tr[data-stage="charge:card"] td[data-col="completed"]', "2")
        bars = browser.find_elements(By.CSS_SELECTOR, 'tr[data-stage="check"] svg rect.done')
        assert bars, "the per-minute history of check draws its completions"
        assert browser.find_elements(By.CSS_SELECTOR, "#chart svg rect.fail")
        # what the jobs cost, from the heartbeat: every job ran, so nothing is left to run
        work = '#work tr[data-stage="check"]'
        wait_for(
            browser,
            lambda: text_of(browser, f'{work} td[data-col="job_mean"]').endswith(" ms"),
            "check's mean job time",
        )
        assert text_of(browser, f'{work} td[data-col="workers"]') == "1"
        assert text_of(browser, f'{work} td[data-col="backlog"]') == "0 s"
        assert text_of(browser, f'{work} td[data-col="eta"]') == "0 s"
        assert text_of(browser, "#flow-eta") == "0 s"
        # the nodes table shows the real worker processes
        worker = 'tr[data-worker="check#0"]'
        wait_for(browser, lambda: text_of(browser, f'{worker} td[data-col="jobs"]') == "3", "jobs")
        pid = int(text_of(browser, f'{worker} td[data-col="pid"]'))
        assert psutil.Process(pid).ppid() == os.getpid()  # a worker this supervisor forked
        assert text_of(browser, f'{worker} td[data-col="rss"]').endswith("MiB")
        assert text_of(browser, f'{worker} td[data-col="state"]') == "idle"
        assert "node-a" in text_of(browser, "#nodes tr.node")
        assert refused


def test_search_a_lookup_attribute_open_the_failed_job_and_retry_it(
    redis_url: str,
    r: redis.Redis,
    start_dashboard: Callable[..., Dashboard],
    browser: webdriver.Chrome,
) -> None:
    flow = with_workers(shop(redis_url), redis_url)
    r.set("broken", 1)
    with flow.start_all(node_id="node-a") as sup:
        (job_id,) = flow.create_jobs([order(5, 7, note=XSS)])
        (job,) = sup.wait([job_id], timeout=60)
        assert job["failed"] is True
        r.delete("broken")  # the next attempt will pass
        dashboard = start_dashboard()
        browser.get(dashboard.base + "/search")
        Select(browser.find_element(By.ID, "search-flow")).select_by_value("shop")
        Select(browser.find_element(By.ID, "search-attribute")).select_by_value("user")
        browser.find_element(By.ID, "search-value").send_keys("7")
        browser.find_element(By.ID, "search-go").click()
        result = f'#results tr[data-job="{job_id}"]'
        wait_text(browser, f'{result} td[data-col="state"]', "failed")
        assert XSS in text_of(browser, f'{result} td[data-col="preview"]')
        click(browser, f"{result} a")

        wait_text(browser, "#job-state", "failed")
        assert text_of(browser, "#job-places") == "failed in check"
        assert text_of(browser, "#errors td[data-col='kind']") == "exception"
        assert text_of(browser, "#errors td[data-col='error']") == (
            "RuntimeError: the card service is down"
        )
        # a field holding markup is text, never HTML: no alert, no script element added
        assert text_of(browser, 'tr[data-field="note"] pre') == json.dumps(XSS)
        with pytest.raises(NoAlertPresentException):
            browser.switch_to.alert.text  # noqa: B018 - reading it is the check
        assert browser.execute_script("return document.scripts.length") == 2  # ours, the data
        assert XSS not in browser.page_source  # the DOM serialises the text escaped
        link = browser.find_element(By.CSS_SELECTOR, 'tr[data-field="user"] a.lookup')
        assert link.text == "user = 7"
        assert "attribute=user&value=7" in (link.get_attribute("href") or "")

        click(browser, 'button[data-action="retry"]')
        wait_text(browser, "#job-state", "done")  # the retried job went through the flow
        wait_text(browser, '#children td[data-col="state"]', "done")
        assert not browser.find_elements(By.CSS_SELECTOR, 'button[data-action="retry"]')
        assert "put 1 job(s) back on check" in text_of(browser, "#flash")


def test_a_stage_is_read_a_page_at_a_time_and_cancel_works_from_it(
    redis_url: str,
    r: redis.Redis,
    start_dashboard: Callable[..., Dashboard],
    browser: webdriver.Chrome,
) -> None:
    failed_job(redis_url)  # registers the flow; no supervisor runs it now
    flow = shop(redis_url)
    ids = flow.create_jobs([order(n, n % 3, note=XSS) for n in range(120)])
    dashboard = start_dashboard()
    browser.get(f"{dashboard.base}/flows/shop/stages/check?state=waiting&count=50")
    wait_text(browser, "#range", f"1{DASH}50 of 120 waiting")
    rows = browser.find_elements(By.CSS_SELECTOR, "#jobs tbody tr[data-job]")
    listed = [i.decode() for i in r.lrange("queue:check:waiting", 0, 49)]
    assert [row.get_attribute("data-job") for row in rows] == listed
    assert XSS in text_of(browser, "#jobs tbody td[data-col='preview']")
    click(browser, "#next")
    wait_text(browser, "#range", f"51{DASH}100 of 120 waiting")
    assert (
        browser.find_element(By.CSS_SELECTOR, "#jobs tbody tr").get_attribute("data-job")
        == r.lindex("queue:check:waiting", 50).decode()
    )

    first = f'tr[data-job="{listed[0]}"] button[data-action="cancel"]'
    browser.get(f"{dashboard.base}/flows/shop/stages/check?state=waiting&count=50")
    click(browser, first)
    wait_text(browser, '#tabs a[data-state="waiting"]', "waiting 119")
    assert set(ids) - {i.decode() for i in r.lrange("queue:check:waiting", 0, -1)} == {listed[0]}
    click(browser, '#tabs a[data-state="failed"]')
    wait_text(browser, "#range", f"1{DASH}1 of 1 failed")
    assert browser.find_element(By.CSS_SELECTOR, 'button[data-action="retry-all"]')


def test_read_only_hides_actions_and_every_action_wants_the_csrf_token(
    redis_url: str, start_dashboard: Callable[..., Dashboard], browser: webdriver.Chrome
) -> None:
    job_id = failed_job(redis_url)
    read_only = start_dashboard("--read-only")
    browser.get(f"{read_only.base}/jobs/{job_id}")
    wait_text(browser, "#job-state", "failed")
    assert text_of(browser, "#read-only") == "read-only"
    assert browser.find_elements(By.CSS_SELECTOR, "button[data-action]") == []
    browser.get(f"{read_only.base}/flows/shop")
    wait_text(browser, 'tr[data-stage="check"] td[data-col="failed"]', "1")
    assert browser.find_elements(By.CSS_SELECTOR, "button[data-action]") == []

    status, page = http(f"{read_only.base}/jobs/{job_id}")
    assert status == 200 and isinstance(page, str)
    retry = {"queue": "check", "ids": [job_id]}
    token = {"X-CSRF-Token": csrf_of(page)}
    status, reply = http(f"{read_only.base}/api/flows/shop/retry", retry, token)
    assert (status, reply) == (403, {"error": "the dashboard is read-only"})

    dashboard = start_dashboard()
    url = f"{dashboard.base}/api/flows/shop/retry"
    status, page = http(f"{dashboard.base}/")
    assert isinstance(page, str)
    token = {"X-CSRF-Token": csrf_of(page)}
    for headers in (
        {},  # no token
        {"X-CSRF-Token": "0" * 64},  # a wrong one
        {**token, "Origin": "http://evil.example"},  # another site's page
        {**token, "Sec-Fetch-Site": "cross-site"},
    ):
        status, reply = http(url, retry, headers)
        assert status == 403, (headers, reply)
    for action in ("cancel", "delete"):
        status, _ = http(f"{dashboard.base}/api/flows/shop/jobs/{job_id}/{action}", {})
        assert status == 403
    status, _ = http(f"{dashboard.base}/", headers={"Host": "evil.example:80"})
    assert status == 400  # bound to loopback: another host name is DNS rebinding
    origin = {"Origin": dashboard.base}
    status, reply = http(url, retry, {**token, **origin})
    assert (status, reply) == (200, {"moved": [job_id], "message": "put 1 job(s) back on check"})
    status, reply = http(url, retry, token)  # no supervisor runs: it waits, it is not failed
    assert status == 409 and reply == {"moved": [], "error": f"not failed in check: {job_id}"}
    delete = f"{dashboard.base}/api/flows/shop/jobs/{job_id}/delete"
    assert http(delete, {}, token) == (200, {"deleted": True, "message": "deleted"})
    assert http(f"{dashboard.base}/api/jobs/{job_id}")[0] == 404


def test_a_token_guards_every_page_and_the_login_form_sets_a_cookie(
    start_dashboard: Callable[..., Dashboard], browser: webdriver.Chrome
) -> None:
    dashboard = start_dashboard(env={"PROCFLOW_DASHBOARD_TOKEN": "s3cret"})
    assert "token required" in dashboard.output.lines[0]
    assert http(f"{dashboard.base}/api/flows")[0] == 401
    status, _ = http(f"{dashboard.base}/api/flows", headers={"Authorization": "Bearer s3cret"})
    assert status == 200
    browser.get(f"{dashboard.base}/flows/shop")
    wait_for(browser, lambda: "/login" in browser.current_url, "the login form")
    browser.find_element(By.ID, "token").send_keys("wrong")
    browser.find_element(By.ID, "login").click()
    wait_text(browser, "#login-error", "wrong token")
    browser.find_element(By.ID, "token").send_keys("s3cret")
    browser.find_element(By.ID, "login").click()
    wait_for(browser, lambda: browser.current_url.endswith("/flows/shop"), "the page asked for")
    wait_for(browser, lambda: "'shop'" in text_of(browser, "#error"), "the page, logged in")


def test_a_non_loopback_address_without_a_token_is_refused() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "procflow", "dashboard", "--host", "0.0.0.0", "--port", "0"],
        cwd=ROOT,
        env={k: v for k, v in os.environ.items() if k != "PROCFLOW_DASHBOARD_TOKEN"},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert out.returncode == 2, out
    assert "not a loopback address, without a token" in out.stderr


def test_a_server_that_may_evict_jobs_gets_a_banner_on_every_page(
    redis_url: str, browser: webdriver.Chrome
) -> None:
    lru = RedisServer(
        server_binary("redis"),
        extra_args=("--maxmemory", "50mb", "--maxmemory-policy", "allkeys-lru"),
    )
    lru.start()
    try:
        dashboard = Dashboard(lru.url)
        try:
            browser.get(dashboard.base + "/")
            wait_for(
                browser,
                lambda: "maxmemory-policy allkeys-lru" in text_of(browser, "#eviction"),
                "the eviction banner",
            )
            assert "CONFIG SET maxmemory-policy noeviction" in text_of(browser, "#eviction")
            browser.get(dashboard.base + "/search")
            wait_for(browser, lambda: browser.find_element(By.ID, "eviction"), "the banner")
        finally:
            dashboard.stop()
    finally:
        lru.stop()
    quiet = Dashboard(redis_url)  # noeviction: no banner
    try:
        status, page = http(quiet.base + "/")
        assert status == 200 and isinstance(page, str)
        assert 'id="eviction"' not in page
    finally:
        quiet.stop()


def test_a_stage_is_paused_and_resumed_from_the_flow_page(
    redis_url: str, start_dashboard: Callable[..., Dashboard], browser: webdriver.Chrome
) -> None:
    failed_job(redis_url)  # registers the flow
    flow = shop(redis_url)
    dashboard = start_dashboard()
    browser.get(f"{dashboard.base}/flows/shop")
    click(browser, 'tr[data-stage="charge"] button[data-action="pause"]')
    wait_text(browser, 'tr[data-stage="charge"] td[data-col="stage"]', "charge (paused)")
    assert flow.paused() == {"check": False, "charge": True, "charge:card": False}
    click(browser, 'tr[data-stage="charge"] button[data-action="resume"]')
    wait_text(browser, 'tr[data-stage="charge"] td[data-col="stage"]', "charge")
    assert flow.paused()["charge"] is False
