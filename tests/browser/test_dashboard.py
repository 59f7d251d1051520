"""The live dashboard in a real browser: headless Chromium (Debian's, driven by playwright)
loads the page while the embedded demo streams, and checks what a user would see."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
import uvicorn

from streamrec.demo import EmbeddedSystem
from streamrec.settings import Settings
from tests.helpers import ARTIFACTS, free_port, wait_for

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-quic",
    "--no-first-run",
    "--disable-component-update",
    "--disable-sync",
]
STATIC = Path(__file__).parents[2] / "serving" / "dashboard" / "static"
SCREENSHOT = ARTIFACTS / "dashboard.png"

# Every chart must draw; line and area charts from at least two snapshots.
TIME_CHARTS = [
    "events",
    "lag",
    "dead-letter",
    "freshness",
    "requests",
    "latency",
    "bandit-shares",
    "bandit-ctr",
]
BAR_CHARTS = ["stages", "candidates", "removed"]

CHART_DRAWN = """([name, minPoints]) => {
    const marks = document.querySelectorAll(`[data-testid="chart-${name}"] path.mark`);
    return Array.from(marks).some(
        p => (p.getAttribute('d') || '').length > 0 && Number(p.dataset.n) >= minPoints);
}"""

# In CI the browser must be there: a silent skip would hide a broken install.
pytestmark = pytest.mark.skipif(
    not CHROMIUM.exists() and not os.environ.get("CI"),
    reason=f"no Chromium at {CHROMIUM} (apt-get install chromium); CI always runs this test",
)


@pytest.fixture
def browser() -> Iterator[Any]:
    """Debian's Chromium, headless, with a fresh profile."""
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.fail("playwright is not installed: pip install -e '.[dev]'")
    if not CHROMIUM.exists():
        pytest.fail(f"no Chromium at {CHROMIUM}: apt-get install chromium")
    with sync_playwright() as pw:
        chromium = pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            yield chromium
        finally:
            chromium.close()


class PageLog:
    """What a page reported: console errors, uncaught exceptions, and every URL it asked."""

    def __init__(self, page: Any) -> None:
        self.errors: list[str] = []
        self.requests: list[str] = []
        page.on("console", self._console)
        page.on("pageerror", lambda e: self.errors.append(f"page error: {e}"))
        page.on("request", lambda r: self.requests.append(r.url))

    def _console(self, message: Any) -> None:
        if message.type == "error":
            self.errors.append(f"console.error: {message.text}")

    def foreign(self, base: str) -> list[str]:
        """Requests beyond the page's own server: they would break offline use."""
        return [u for u in self.requests if not u.startswith(base) and not u.startswith("data:")]


@pytest.fixture
def demo() -> Iterator[tuple[str, EmbeddedSystem]]:
    """The embedded system (simulator, worker, simulated feed clients) and its API on a
    free port, served by uvicorn in a thread."""
    # A short attribution window, so clicks on the simulated feeds reach the bandit (and its
    # click-rate chart) within the test rather than after five minutes.
    settings = Settings(learning={"attribution_window_s": 3.0})
    system = EmbeddedSystem(settings, seed=11, rate=300.0, feeds_per_s=10.0)
    system.start()
    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(
            system.app(),
            host="127.0.0.1",
            port=port,
            log_level="warning",
            # The page holds an event stream open; never wait long for it at the end.
            timeout_graceful_shutdown=2,
        )
    )
    thread = threading.Thread(target=server.run, name="dashboard-api", daemon=True)
    thread.start()
    base = f"http://127.0.0.1:{port}"
    try:
        wait_for("the API", lambda: httpx.get(f"{base}/openapi.json", timeout=2).is_success)
        yield base, system
    finally:
        server.should_exit = True
        thread.join(timeout=15)
        system.close()


def active_user(system: EmbeddedSystem) -> str:
    """A simulated user who has just interacted, so they have a live session."""
    messages = system.bus.read(system.settings.topics.interactions)
    for message in reversed(messages):
        event = orjson.loads(message.value or b"{}")
        if event.get("user_id") and event.get("type") not in ("skip", "dismiss"):
            return str(event["user_id"])
    return "u1"


def trending_rows(page: Any) -> list[tuple[str, str, str, str]]:
    """(item, rank, score, move) of each visible trending row, in order."""
    rows = page.eval_on_selector_all(
        "[data-testid=trending-row]",
        """rows => rows.map(r => [
            r.dataset.item,
            r.dataset.rank,
            r.querySelector('[data-testid=trending-score]').textContent,
            r.querySelector('[data-testid=trending-move]').dataset.move,
        ])""",
    )
    return [tuple(r) for r in rows]


@pytest.mark.timeout(120)
def test_the_dashboard_follows_the_stream_in_a_browser(
    demo: tuple[str, EmbeddedSystem], browser: Any
) -> None:
    base, system = demo
    front = httpx.get(f"{base}/", follow_redirects=True, timeout=5)
    assert front.status_code == 200 and "/dashboard/static/dashboard.js" in front.text

    started = time.monotonic()
    ARTIFACTS.mkdir(exist_ok=True)
    page = browser.new_page(viewport={"width": 1366, "height": 768})
    log = PageLog(page)
    try:
        check_live_page(page, base, system)
    finally:
        page.evaluate("window.scrollTo(0, 0)")
        page.screenshot(path=str(SCREENSHOT), full_page=True)
        page.close()

    assert not log.errors, f"the page logged errors: {log.errors}"
    assert not log.foreign(base), f"the page fetched from elsewhere: {log.foreign(base)}"
    assert SCREENSHOT.stat().st_size > 10_000
    assert time.monotonic() - started < 60


def check_live_page(page: Any, base: str, system: EmbeddedSystem) -> None:
    page.goto(f"{base}/dashboard", wait_until="domcontentloaded")
    assert "streamrec" in page.title()
    headings = page.eval_on_selector_all("main h2", "hs => hs.map(h => h.textContent.trim())")
    assert headings == ["Trending", "Stream health", "Funnel", "Bandit", "Try a user"]

    # Live: snapshots arrive over SSE, the status says so, and the newest is fresh.
    page.wait_for_function("document.body.dataset.connection === 'live'", timeout=15_000)
    assert "Live" in page.inner_text("[data-testid=connection-status]")
    count = int(page.evaluate("Number(document.body.dataset.snapshots || 0)"))
    page.wait_for_function(
        f"Number(document.body.dataset.snapshots || 0) >= {count + 3}", timeout=5_000
    )
    ages = []
    for _ in range(4):
        ages.append(page.evaluate("Date.now() - Number(document.body.dataset.lastTs)"))
        page.wait_for_timeout(300)
    assert min(ages) < 1_000 and max(ages) < 1_500, f"snapshots shown too late: {ages} ms"

    # Trending: rows appear, then change (order, a rank or a score) as events flow, and a
    # rank change is never a silent reorder: the moved row carries its arrow.
    page.wait_for_function(
        "document.querySelectorAll('[data-testid=trending-row]').length >= 3", timeout=20_000
    )
    first = trending_rows(page)
    assert all(item and rank for item, rank, _, _ in first)
    previous, changed, moves_checked = first, False, 0
    deadline = time.monotonic() + 12
    while time.monotonic() < deadline and not (changed and moves_checked):
        page.wait_for_timeout(250)
        now = trending_rows(page)
        if [r[:3] for r in now] != [r[:3] for r in first]:
            changed = True
        before = {item: rank for item, rank, _, _ in previous}
        for item, rank, _, move in now:
            if item in before and before[item] != rank:
                assert move in ("up", "down", "new"), f"{item} moved silently: {now}"
                moves_checked += 1
        previous = now
    assert changed, f"the trending rows did not change in 12 s: {first}"
    sparks = page.eval_on_selector_all(
        "[data-testid=trending-row] [data-testid=sparkline] path.mark", "ps => ps.length"
    )
    assert sparks >= 1, "no trending sparkline was drawn"

    # The selectors switch to another half-life and to one category's list.
    page.select_option("[data-testid=trending-half-life]", index=1)
    category = page.eval_on_selector(
        "[data-testid=trending-category]", "s => s.options.length > 1 ? s.options[1].value : ''"
    )
    assert category, "no category to choose"
    page.select_option("[data-testid=trending-category]", category)
    page.wait_for_function(
        "document.querySelectorAll('[data-testid=trending-row]').length >= 1", timeout=5_000
    )
    caption = page.text_content("#trending-caption") or ""
    assert category in caption and "24h" in caption, caption
    page.select_option("[data-testid=trending-half-life]", index=0)
    page.select_option("[data-testid=trending-category]", "global")

    # Every chart draws a path with data.
    pending = [(name, 2) for name in TIME_CHARTS] + [(name, 1) for name in BAR_CHARTS]
    deadline = time.monotonic() + 25
    while pending and time.monotonic() < deadline:
        pending = [p for p in pending if not page.evaluate(CHART_DRAWN, list(p))]
        if pending:
            page.wait_for_timeout(500)
    assert not pending, f"charts without data: {[name for name, _ in pending]}"

    # Keyboard: Tab reaches every control, and the focused one shows a focus ring.
    page.locator("body").focus()
    reached: set[str] = set()
    for _ in range(80):
        page.keyboard.press("Tab")
        focus = page.evaluate(
            """() => { const e = document.activeElement;
                return [e.id || e.dataset.testid || e.tagName,
                        getComputedStyle(e).outlineStyle]; }"""
        )
        reached.add(focus[0])
        if focus[0] in ("trend-half-life", "try-user-id"):
            assert focus[1] != "none", f"{focus[0]} has no visible focus"
    for control in ("trend-half-life", "trend-category", "bandit-segment", "try-user-id"):
        assert control in reached, f"Tab never reaches #{control} ({sorted(reached)})"

    # Try a user, by keyboard: the feed with source, score and propensity, the trace,
    # and the session's nearest categories.
    user = active_user(system)
    page.focus("[data-testid=try-user-input]")
    page.keyboard.type(user)
    page.keyboard.press("Enter")
    page.wait_for_selector("[data-testid=try-user-feed-row]", timeout=10_000)
    rows = page.eval_on_selector_all(
        "[data-testid=try-user-feed-row]",
        """rows => rows.map(r => ['cell-item', 'cell-source', 'cell-score', 'cell-propensity']
              .map(c => r.querySelector(`[data-testid=${c}]`).textContent.trim()))""",
    )
    assert len(rows) >= 5, rows
    for item, source, score, propensity in rows:
        assert item and source and source != "–", rows
        float(score.rstrip("k"))
        assert 0.0 < float(propensity) <= 1.0, rows
    trace = page.inner_text("[data-testid=try-user-trace]")
    for stage in ("retrieval", "filtering", "scoring", "ordering"):
        assert stage in trace, trace
    assert page.evaluate(CHART_DRAWN, ["try-stages", 1]), "the stage trace chart is empty"
    assert page.eval_on_selector_all("[data-testid=trace-sources] tbody tr", "r => r.length") >= 1
    page.wait_for_selector("[data-testid=try-user-session-category]", timeout=5_000)
    assert user in page.inner_text("[data-testid=try-user-status]")


def test_the_dashboard_survives_partial_and_malformed_snapshots(browser: Any) -> None:
    """Early on, or with the store down, fields are missing: the page says so and draws
    what it has, with no errors. Served by routes in the browser, no server needed."""
    base = "http://dashboard.test"
    now_ms = int(time.time() * 1000)
    history = [
        {},
        None,
        "not a snapshot",
        {
            "ts": now_ms - 2_000,
            "trending": {
                "lists": {
                    "3600": {
                        "global": [
                            None,
                            {"rank": 1},
                            {"item_id": "i1", "rank": 1, "previous_rank": None, "score": 2.5},
                            {"item_id": "i2", "rank": 2, "previous_rank": 1, "spark": [1, "x"]},
                        ]
                    }
                }
            },
        },
        {
            "ts": now_ms - 1_500,
            "stream": {"events_per_s": {"view": 5}, "lag": {}, "freshness_ms": {"p50": None}},
            "funnel": {"stage_ms": {"scoring": {}}, "candidates": {}, "latency_ms": None},
            "bandit": {"segments": {"new|web": {}, "returning|web": {"popular": {"share": 1}}}},
        },
    ]
    events = (
        "retry: 600000\n\n"
        "event: snapshot\ndata: not json\n\n"
        'event: snapshot\ndata: {"ts": "soon", "stream": {"events_per_s_total": 7}, '
        '"trending": null}\n\n'
        # Later than "soon", which the page stamps with its own clock on arrival.
        f'event: snapshot\ndata: {{"ts": {now_ms + 60_000}, "degraded": "redis is unreachable"}}'
        "\n\n"
    )
    bodies: dict[str, tuple[str, bytes]] = {
        "/dashboard": ("text/html", (STATIC / "index.html").read_bytes()),
        **{
            f"/dashboard/static/{name}": (kind, (STATIC / name).read_bytes())
            for name, kind in (("dashboard.js", "text/javascript"), ("dashboard.css", "text/css"))
        },
        "/dashboard/history": ("application/json", orjson.dumps({"snapshots": history})),
        "/dashboard/events": ("text/event-stream", events.encode()),
        "/feed/u9": ("application/json", b'{"user_id": "u9", "items": [{"item_id": "i1"}]}'),
        "/dashboard/user/u9": ("application/json", b'{"user_id": "u9"}'),
    }

    def serve(route: Any) -> None:
        path = "/" + route.request.url.split("/", 3)[3].split("?")[0]
        content_type, body = bodies.get(path, ("text/plain", b""))
        route.fulfill(status=200 if path in bodies else 404, content_type=content_type, body=body)

    page = browser.new_page(viewport={"width": 1366, "height": 768})
    log = PageLog(page)
    page.route("**/*", serve)
    page.goto(f"{base}/dashboard", wait_until="domcontentloaded")

    # The last snapshot says the store is down; the trending list of the last good one stays.
    banner = page.wait_for_selector("[data-testid=degraded-banner]:visible", timeout=5_000)
    assert "redis is unreachable" in banner.inner_text()
    page.wait_for_selector("[data-testid=trending-row]", timeout=5_000)
    assert [r[:2] for r in trending_rows(page)] == [("i1", "1"), ("i2", "2")]
    assert page.is_visible("[data-testid=trending-as-of]")
    assert "No data yet" in page.inner_text("[data-testid=chart-lag]")
    assert page.evaluate(CHART_DRAWN, ["events", 2])  # 5/s, then 7/s

    page.fill("[data-testid=try-user-input]", "u9")
    page.keyboard.press("Enter")
    page.wait_for_selector("[data-testid=try-user-feed-row]", timeout=5_000)
    assert "No active session" in page.inner_text("[data-testid=try-user-session]")
    assert "Feed of 1 item for u9" in page.inner_text("[data-testid=try-user-status]")
    page.close()

    assert not log.errors, f"the page logged errors: {log.errors}"
    assert not log.foreign(base), log.foreign(base)
