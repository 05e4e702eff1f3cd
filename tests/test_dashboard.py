"""The web dashboard in a real headless Chromium (Debian's, driven by Playwright; installed by
scripts/ensure-chromium), against a daemon with the real RabbitMQ and two fake Ray clusters.

The tests take the screenshots shown in docs/dashboard.md: set RMCS_SCREENSHOTS=docs/img to
write them there (otherwise they go to the test's temporary directory)."""

from __future__ import annotations

import asyncio
import os
import secrets
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, AsyncIterator

import aiohttp
import pytest
import yaml
from playwright.async_api import Browser, Page, async_playwright, expect

from fakeray import GIB, FakeCluster, FakeServer
from scheduler_daemon.daemon import Daemon
from scheduler_daemon.queueconf import parse_queues
from support import daemon_launcher, delete_topology, make_settings, publish, running_daemon, sid

pytestmark = pytest.mark.usefixtures("rabbitmq")

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
LIVE_LAG_S = 1.0  # a change shows in an open page within this long after its event


@dataclass
class World:
    daemon: Daemon
    base: str
    big: FakeCluster
    solo: FakeCluster
    tokens: dict[str, str]  # user -> API token
    shots: Path

    async def submit(self, where: str, entrypoint: str, *, tags: tuple[str, ...] = (), name: str = "d",
                     queue: str | None = None) -> str:
        job = sid(name)
        await publish(self.daemon.settings, {"submission_id": job, "entrypoint": entrypoint,
                                             "cluster_tags": [where], "tags": list(tags)}, queue=queue)
        return job

    async def job(self, job: str) -> dict[str, Any]:
        async with aiohttp.ClientSession() as http:
            async with http.get(f"{self.base}/api/v1/jobs/{job}") as r:
                return await r.json() if r.status == 200 else {}  # type: ignore[no-any-return]

    async def wait_state(self, job: str, state: str, timeout: float = 30.0) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            got = await self.job(job)
            if got.get("state") == state:
                return got
            assert time.monotonic() < deadline, f"{job} not {state} after {timeout}s: {got}"
            await asyncio.sleep(0.1)

    async def shot(self, page: Page, name: str, *, full_page: bool = False) -> None:
        await page.screenshot(path=str(self.shots / f"{name}.png"), full_page=full_page)


@pytest.fixture(scope="module")
async def world(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[World]:
    tmp = tmp_path_factory.mktemp("dashboard")
    tokens = {"alice": secrets.token_urlsafe(24), "mallory": secrets.token_urlsafe(24)}
    (tmp / "tokens.yaml").write_text(yaml.safe_dump(tokens))
    big = FakeCluster("big", nodes={"big-node-1": {"CPU": 16, "GPU": 2, "memory": 64 * GIB},
                                    "big-node-2": {"CPU": 8, "memory": 32 * GIB}}, duration_s=0.3)
    solo = FakeCluster("solo", nodes={"solo-node-1": {"CPU": 1, "memory": 8 * GIB}}, duration_s=0.3)
    servers = [FakeServer([big]), FakeServer([solo])]
    for server in servers:
        await server.start()
    # Jobs published without a broker user belong to default_owner: alice here.
    s = make_settings(tmp, window_size=8, default_owner="alice", api_tokens_file=str(tmp / "tokens.yaml"),
                      queues=parse_queues({"research": {"weight": 2}}))
    shots = Path(os.environ.get("RMCS_SCREENSHOTS") or tmp)
    shots.mkdir(parents=True, exist_ok=True)
    try:
        configs = (big.config(tags=frozenset({"big"})), solo.config(tags=frozenset({"solo"})))
        async with running_daemon(s, configs) as daemon:
            w = World(daemon, f"http://{s.http_addr}", big, solo, tokens, shots)
            await _until_ready(w.base)
            yield w
    finally:
        for server in servers:
            await server.stop()


async def _until_ready(base: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    async with aiohttp.ClientSession() as http:
        while True:
            try:
                async with http.get(base + "/api/v1/clusters") as r:
                    views = (await r.json())["clusters"]
                    if len(views) == 2 and all(v["nodes"] for v in views):
                        return
            except aiohttp.ClientError:
                pass
            assert time.monotonic() < deadline, "the clusters were not reported in time"
            await asyncio.sleep(0.2)


@pytest.fixture(scope="module")
async def browser() -> AsyncIterator[Browser]:
    assert Path(CHROMIUM).exists(), f"{CHROMIUM} is missing: run scripts/ensure-chromium (make test does)"
    async with async_playwright() as p:
        b = await p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield b
        finally:
            await b.close()


@pytest.fixture
async def page(browser: Browser) -> AsyncIterator[Page]:
    context = await browser.new_context(viewport={"width": 1280, "height": 800})
    p = await context.new_page()
    errors: list[str] = []
    p.on("pageerror", lambda exc: errors.append(str(exc)))
    try:
        yield p
    finally:
        await context.close()
    assert not errors, f"the page's script failed: {errors}"


async def test_overview_shows_both_clusters(world: World, page: Page) -> None:
    await page.goto(world.base + "/")
    assert await page.title() == "Overview · rmcs"
    for name in ("big", "solo"):
        card = page.locator("article.card", has=page.get_by_role("heading", name=name))
        await card.wait_for()
        assert "up" in await card.inner_text()
    big = await page.locator("article.card", has=page.get_by_role("heading", name="big")).inner_text()
    assert "24 free of 24" in big and "GPU" in big and "96.0 GiB" in big
    assert await page.locator("#n-broker").inner_text() != ""
    await page.get_by_text("Live").first.wait_for()  # the event stream is open
    await world.shot(page, "overview")


async def test_a_published_job_moves_through_its_states_without_a_reload(world: World, page: Page) -> None:
    tag = f"live-{secrets.token_hex(3)}"
    await page.goto(f"{world.base}/jobs?tag={tag}")
    await page.get_by_text("Live").first.wait_for()
    await page.evaluate("""(tag) => { window.__sameDocument = tag; }""", tag)
    blocker = await world.submit("solo", "/bin/sleep 8", tags=(tag,), name="blocker")
    await world.wait_state(blocker, "RUNNING")
    job = await world.submit("solo", "/bin/sleep 2", tags=(tag,), name="watched")
    # Record, in the page, every state the job's row shows and when.
    await page.evaluate("""(sid) => {
        window.__seen = [];
        const look = () => {
            const link = document.querySelector(`a[href="/jobs/${sid}"]`);
            if (!link) return;
            const state = link.closest("tr").querySelector(".badge").textContent;
            const last = window.__seen[window.__seen.length - 1];
            if (!last || last[0] !== state) window.__seen.push([state, Date.now() / 1000]);
        };
        new MutationObserver(look).observe(document.getElementById("live"), {childList: true, subtree: true});
        look();
    }""", job)
    # While it waits behind the blocker, its own page says where it stands and why.
    other = await page.context.new_page()
    for _ in range(20):  # the scheduler reports the jobs it holds once a second: load until it has
        await other.goto(f"{world.base}/jobs/{job}")
        if await other.locator("#position").count():
            break
        await asyncio.sleep(0.25)
    await expect(other.locator("#position")).to_contain_text("position 1 of 1", timeout=5000)
    await expect(other.locator("#h-why + p + p")).to_contain_text("Why it waits: no cluster fits now")
    await other.close()
    done = await world.wait_state(job, "SUCCEEDED", 40)
    await page.locator(f'a[href="/jobs/{job}"]').locator("xpath=ancestor::tr").get_by_text("SUCCEEDED").wait_for(
        timeout=5000)
    seen = await page.evaluate("window.__seen")
    assert await page.evaluate("window.__sameDocument") == tag, "the page was reloaded"
    states = [s for s, _ in seen]
    assert states[0] == "ACCEPTED" and "RUNNING" in states and states[-1] == "SUCCEEDED", seen
    assert states.index("ACCEPTED") < states.index("RUNNING") < states.index("SUCCEEDED")
    # Each change reached the open page within LIVE_LAG_S of its event.
    when = {t["state"]: _unix(t["ts"]) for t in done["transitions"]}
    lags = {s: round(at - when[s], 3) for s, at in seen if s in when}
    print("lag from event to the open page, s:", lags)
    assert all(lag <= LIVE_LAG_S for s, lag in lags.items() if s != "ACCEPTED"), lags
    await world.shot(page, "jobs-live")


async def test_a_filter_in_the_url_is_honoured(world: World, page: Page) -> None:
    red, blue = f"red-{secrets.token_hex(3)}", f"blue-{secrets.token_hex(3)}"
    reds = [await world.submit("big", "/bin/true", tags=(red, "demo"), name="red") for _ in range(3)]
    blues = [await world.submit("big", "/bin/true", tags=(blue, "demo"), name="blue") for _ in range(2)]
    for job in reds + blues:
        await world.wait_state(job, "SUCCEEDED")
    await page.goto(f"{world.base}/jobs?state=SUCCEEDED&tag={red}&cluster=big")
    rows = page.locator("table.jobs tbody tr")
    assert await rows.count() == 3
    text = await page.locator("table.jobs").inner_text()
    assert all(j in text for j in reds) and not any(j in text for j in blues)
    assert await page.locator("select[name=state]").input_value() == "SUCCEEDED"
    assert await page.locator("select[name=cluster]").input_value() == "big"
    assert await page.locator("input[name=tag]").input_value() == red
    # The form puts the filters in the URL: choose another tag, and the address says so.
    await page.locator("input[name=tag]").fill(blue)
    await page.get_by_role("button", name="Apply").click()
    await page.wait_for_url(f"**tag={blue}**")
    assert await page.locator("table.jobs tbody tr").count() == 2
    # A page of one row: the pager's link carries the filters along.
    await page.goto(f"{world.base}/jobs?tag=demo&limit=1")
    assert "unknown filter 'limit'" in await page.get_by_role("alert").inner_text()
    await page.goto(f"{world.base}/jobs?tag=demo")
    await world.shot(page, "jobs")


async def test_the_queues_show_on_the_overview_and_filter_the_jobs(world: World, page: Page) -> None:
    ours = await world.submit("big", "/bin/true", name="research", queue="research")
    theirs = await world.submit("big", "/bin/true", name="plain")
    for job in (ours, theirs):
        await world.wait_state(job, "SUCCEEDED")
    await page.goto(world.base + "/")
    queues = page.get_by_role("table", name="Jobs per queue")
    await expect(queues.get_by_role("link", name="research")).to_be_visible(timeout=10_000)  # reported every 5 s
    assert "default" in await queues.inner_text()
    await queues.get_by_role("link", name="research").click()
    await page.wait_for_url("**queue=research**")
    text = await page.locator("table.jobs").inner_text()
    assert ours in text and theirs not in text and "research" in text
    assert await page.locator("select[name=queue]").input_value() == "research"
    await page.goto(f"{world.base}/jobs?queue=nope")
    assert "no queue 'nope'; the queues are default, research" in await page.get_by_role("alert").inner_text()


async def test_the_job_page_shows_timeline_placement_and_log_tail(world: World, page: Page) -> None:
    job = await world.submit("big", "/bin/sleep 4", tags=("train",), name="page")
    await world.wait_state(job, "RUNNING")
    await page.goto(f"{world.base}/jobs/{job}")
    timeline = page.locator("table.timeline")
    for state in ("ACCEPTED", "DISPATCHED", "RUNNING"):
        await timeline.get_by_text(state, exact=True).first.wait_for()
    assert "Why it runs on big: chose big" in await page.locator("#h-why + p").inner_text()
    await expect(page.locator("#log")).to_contain_text("fake ray big: running /bin/sleep 4")
    link = page.get_by_role("link", name="open in big's Ray dashboard")
    assert await link.get_attribute("href") == f"{world.big.url.rstrip('/')}/#/jobs/{job}"
    await world.shot(page, "job", full_page=True)
    await timeline.get_by_text("SUCCEEDED", exact=True).wait_for(timeout=10000)  # live, still no reload
    assert await page.locator("#stop").is_hidden()


async def test_the_owners_stop_button_stops_and_another_users_is_refused(world: World, page: Page) -> None:
    job = await world.submit("big", "/bin/sleep 60", name="stopme")
    await world.wait_state(job, "RUNNING")
    await page.goto(f"{world.base}/jobs/{job}")
    await page.get_by_text("Live").first.wait_for()
    await page.get_by_label("Your API token").fill(world.tokens["mallory"])
    await page.get_by_role("button", name="Stop job").click()
    result = page.locator("#stop-result")
    await expect(result).to_contain_text("Refused (403)")
    assert "'mallory' may not stop this job" in await result.inner_text()
    await asyncio.sleep(0.5)
    assert (await world.job(job))["state"] == "RUNNING"
    await page.get_by_label("Your API token").fill(world.tokens["alice"])
    await page.get_by_label("Reason").fill("done with it")
    await page.get_by_role("button", name="Stop job").click()
    await expect(result).to_contain_text("Stop accepted")
    await page.locator("table.timeline").get_by_text("STOPPED", exact=True).wait_for(timeout=10000)
    assert (await world.job(job))["state"] == "STOPPED"
    assert await page.locator("#stop").is_hidden()


async def test_clusters_page_phone_and_dark_mode(world: World, browser: Browser) -> None:
    context = await browser.new_context(viewport={"width": 1280, "height": 800})
    page = await context.new_page()
    await page.goto(world.base + "/clusters")
    big = page.locator("#cluster-big")
    assert "big-node-1" in await big.inner_text() and " / 16\t" in await big.inner_text()
    assert "ms" in await big.inner_text()
    await big.locator("table").nth(1).get_by_text("up").first.wait_for()  # the health history
    await world.shot(page, "clusters")
    await context.close()
    phone = await browser.new_context(viewport={"width": 390, "height": 844}, device_scale_factor=2,
                                      is_mobile=True, has_touch=True)
    page = await phone.new_page()
    await page.goto(world.base + "/")
    width = await page.evaluate("document.documentElement.scrollWidth")
    assert width <= 390, f"the overview is {width}px wide on a 390px phone"
    await world.shot(page, "overview-phone")
    await phone.close()
    dark = await browser.new_context(viewport={"width": 1280, "height": 800}, color_scheme="dark")
    page = await dark.new_page()
    await page.goto(world.base + "/")
    background = await page.evaluate("getComputedStyle(document.body).backgroundColor")
    assert background == "rgb(13, 17, 23)"
    await world.shot(page, "overview-dark")
    await dark.close()


async def test_keyboard_and_javascript_off(world: World, browser: Browser) -> None:
    job = await world.submit("big", "/bin/sleep 60", tags=("nojs",), name="nojs")
    await world.wait_state(job, "RUNNING")
    context = await browser.new_context(viewport={"width": 1280, "height": 800}, java_script_enabled=False)
    page = await context.new_page()
    await page.goto(world.base + "/")
    assert await page.locator("article.card").count() == 2
    assert "JavaScript is off" in await page.locator("#livestate").inner_text()
    # Keyboard: the first Tab reaches the skip link, which leads to the content.
    await page.keyboard.press("Tab")
    assert await page.evaluate("document.activeElement.textContent") == "Skip to content"
    await page.keyboard.press("Enter")
    assert await page.evaluate("document.activeElement.id") == "main"
    await page.goto(f"{world.base}/jobs?tag=nojs")
    assert job in await page.locator("table.jobs").inner_text()
    # The stop form works without the script too, with the same rule.
    await page.goto(f"{world.base}/jobs/{job}")
    await page.get_by_label("Your API token").fill(world.tokens["mallory"])
    await page.get_by_role("button", name="Stop job").click()
    assert "may not stop this job" in await page.locator("#stop-result").inner_text()
    await page.get_by_label("Your API token").fill(world.tokens["alice"])
    await page.get_by_role("button", name="Stop job").click()
    assert "Refused" not in await page.locator("#stop-result").inner_text()
    await world.wait_state(job, "STOPPED")
    await context.close()


async def test_served_by_the_status_process_of_a_real_daemon(tmp_path: Path, browser: Browser) -> None:
    """The same pages from a daemon run as a real process, its status service a child of its own."""
    from scheduler_daemon.broker import declare

    big = FakeCluster("big", nodes={"b1": {"CPU": 4, "memory": 8 * GIB}}, duration_s=0.3)
    solo = FakeCluster("solo", nodes={"s1": {"CPU": 1, "memory": 8 * GIB}}, duration_s=0.3)
    servers = [FakeServer([big]), FakeServer([solo])]
    for server in servers:
        await server.start()
    s = make_settings(tmp_path)
    await declare(s)
    daemon = daemon_launcher(s, (big.config(tags=frozenset({"big"})), solo.config(tags=frozenset({"solo"}))),
                             tmp_path)()
    context = await browser.new_context(viewport={"width": 1280, "height": 800})
    try:
        base = f"http://{s.http_addr}"
        await _until_ready(base, 60)
        page = await context.new_page()
        await page.goto(base + "/jobs")
        await page.get_by_text("Live").first.wait_for()
        job = sid("proc")
        await publish(s, {"submission_id": job, "entrypoint": "/bin/true", "cluster_tags": ["solo"]})
        row = page.locator(f'a[href="/jobs/{job}"]').locator("xpath=ancestor::tr")
        await row.get_by_text("SUCCEEDED", exact=True).wait_for(timeout=20000)
        await page.get_by_role("link", name="Overview").click()
        assert await page.locator("article.card").count() == 2
    finally:
        await context.close()
        daemon.terminate()
        await asyncio.to_thread(daemon.wait, 30)
        for server in servers:
            await server.stop()
        await delete_topology(s)


def _unix(ts: str) -> float:
    from datetime import datetime

    return datetime.fromisoformat(ts.replace("Z", "+00:00")).timestamp()
