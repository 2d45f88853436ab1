"""Helpers for real-browser tests: a `streamlit run` server on a free localhost port + headless chromium."""
from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
from contextlib import contextmanager

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CHROMIUM = "/usr/bin/chromium"
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-quic",
         "--no-first-run", "--disable-component-update", "--disable-sync"]
SHOTS = os.path.join(ROOT, "docs", "screenshots")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def streamlit_server(script: str = "app.py", live_feed: str | None = None):
    port = free_port()
    env = dict(os.environ, HF_HUB_OFFLINE="1", STREAMLIT_BROWSER_GATHER_USAGE_STATS="false")
    # "1": the live status component (ui/live_feed.py), the app's default; "0": the status fragment. By default
    # as DECODING_LAB_BROWSER_LIVE_FEED says (AppTest runs keep the fragment: tests/conftest.py)
    env["DECODING_LAB_LIVE_FEED"] = live_feed if live_feed is not None else os.environ.get(
        "DECODING_LAB_BROWSER_LIVE_FEED", "1")
    log = open(os.path.join(ROOT, "tests", f".streamlit_{port}.log"), "w")
    proc = subprocess.Popen([sys.executable, "-m", "streamlit", "run", script, "--server.address", "127.0.0.1",
                             "--server.port", str(port), "--server.headless", "true",
                             "--browser.gatherUsageStats", "false", "--server.fileWatcherType", "none"],
                            cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        end = time.time() + 90
        while time.time() < end:
            try:
                if urllib.request.urlopen(url + "/_stcore/health", timeout=2).status == 200:
                    break
            except Exception:
                time.sleep(0.5)
            if proc.poll() is not None:
                raise RuntimeError("streamlit exited early; see " + log.name)
        else:
            raise RuntimeError("streamlit did not become healthy in 90 s")
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


@contextmanager
def browser():
    from playwright.sync_api import sync_playwright
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=FLAGS, headless=True)
        try:
            yield b
        finally:
            b.close()


TRACEBACK_SIGNS = ("Traceback (most recent call last)", 'File "/', "site-packages/", "Exception:")


def no_exception(page) -> None:
    """Fail if Streamlit shows an exception box, or any traceback text reaches the page."""
    boxes = page.locator('[data-testid="stException"]')
    if boxes.count():
        raise AssertionError("Streamlit exception on the page: " + boxes.first.inner_text()[:2000])
    text = page.locator("body").inner_text()
    for sign in TRACEBACK_SIGNS:
        if sign in text:
            i = text.index(sign)
            raise AssertionError(f"traceback text on the page ({sign!r}): " + text[max(0, i - 300):i + 700])


def wait_for_idle(page, timeout_s: float = 120) -> None:
    """Wait until the app is not running a script (the status widget disappears)."""
    end = time.time() + timeout_s
    time.sleep(0.5)
    while time.time() < end:
        if page.locator('[data-testid="stStatusWidget"]').count() == 0:
            return
        time.sleep(0.3)


def feed_frames(page) -> list:
    """The live status components (ui/live_feed.py) on a page: the status of a live run is drawn there."""
    return [f for f in page.frames if "live_feed" in f.url]


def feed_text(page) -> str:
    """The text of the page's live status components (empty when no run is live). A component showing its
    run's final state is left out: the page is about to redraw that run (the component asked it to)."""
    out = []
    for f in feed_frames(page):
        try:
            if f.locator("body[data-final]").count():
                continue
            out.append(f.locator("body").inner_text(timeout=2000))
        except Exception:  # noqa: BLE001 -- the frame went away (the run ended: the page redraws)
            pass
    return "\n".join(out)


def live_text(page) -> str:
    """What a person reads in the page's main area, live status included (the status component's text first)."""
    main = page.locator("[data-testid='stMain']").first.inner_text()
    live = feed_text(page)
    return (live + "\n" + main) if live else main
