"""Real-browser tests: headless Debian chromium (Playwright) against a real `streamlit run` server.

For every page: start a short generation, wait for the live figures, step back and forward, check that no
Streamlit exception box appears, and save a screenshot to docs/screenshots/ (the README shows them).
"""
import os
import re
import shutil
import time

import pytest

from tests.browser import SHOTS, browser, feed_frames, live_text, no_exception, streamlit_server, wait_for_idle

pytestmark = pytest.mark.skipif(not shutil.which("chromium") and not os.path.exists("/usr/bin/chromium"),
                                reason="Debian chromium is not installed (.ci/run installs it)")

# page url path -> (run button label, max-new-tokens value to type or None, screenshot name)
PAGES = [
    ("Autoregressive", "Generate", 24, "autoregressive"),
    ("Speculative", "Generate", 24, "speculative"),
    ("KV_Cache", "Generate", 24, "kv_cache"),
    ("Jacobi_Lookahead", "Generate", 24, "jacobi_lookahead"),
    ("Diffusion", "Generate", None, "diffusion"),
    ("Compare", "Run all", 16, "compare"),
]


@pytest.fixture(scope="module")
def session():
    os.makedirs(SHOTS, exist_ok=True)
    with streamlit_server() as url, browser() as b:
        page = b.new_page(viewport={"width": 1500, "height": 1100})
        page.set_default_timeout(180_000)
        page.goto(url)
        page.get_by_text("Loaded", exact=False).filter(visible=True).first.wait_for(timeout=180_000)  # home page loads the model
        no_exception(page)
        page.screenshot(path=os.path.join(SHOTS, "home.png"))
        yield url, page


def set_max_tokens(page, n):
    box = page.get_by_role("spinbutton", name=re.compile("max new tokens", re.I))
    if n is not None and box.count():
        box.first.fill(str(n))
        box.first.press("Enter")
        wait_for_idle(page)


def wait_finished(page, timeout_s=300):
    end = time.time() + timeout_s
    while time.time() < end:
        no_exception(page)
        body = live_text(page)   # the main area, live runs' status components included
        # every run on the page has ended (Compare shows one status per configuration)
        if re.search(r"\b(done|error)\b", body) and not re.search(r"(· running|running ·)", body):
            return body
        time.sleep(0.5)
    page.screenshot(path=os.path.join(SHOTS, "_timeout.png"), full_page=True)
    raise AssertionError("the run did not finish in time: " + body[-1500:])


@pytest.mark.parametrize("path, button, max_new, shot", PAGES, ids=[p[0] for p in PAGES])
def test_page_in_browser(session, path, button, max_new, shot):
    url, page = session
    page.goto(f"{url}/{path}")
    page.get_by_role("button", name=button).first.wait_for()
    wait_for_idle(page)
    no_exception(page)
    set_max_tokens(page, max_new)
    page.get_by_role("button", name=button).first.click()
    # live: the status line or a figure appears while the worker runs
    page.locator(".js-plotly-plot, [data-testid='stMarkdownContainer'] strong").first.wait_for()
    body = wait_finished(page)
    assert " error" not in body.lower().split("breakpoint")[0] or "The run stopped with an error" not in body
    wait_for_idle(page)
    page.locator(".js-plotly-plot").first.wait_for()
    assert page.locator(".js-plotly-plot").count() >= 1
    back = page.get_by_role("button", name="◀ Back")
    if back.count() and back.first.is_enabled():
        back.first.click()
        wait_for_idle(page)
        page.get_by_role("button", name="Step ▶").first.click()
        wait_for_idle(page)
    no_exception(page)
    page.mouse.move(5, 5)  # no tooltip over the figures
    time.sleep(0.5)
    page.screenshot(path=os.path.join(SHOTS, f"{shot}.png"), full_page=True)


def test_replay_in_browser(session):
    url, page = session
    page.goto(f"{url}/Replay?trace=autoregressive&step=5")
    page.locator(".js-plotly-plot").first.wait_for()
    wait_for_idle(page)
    no_exception(page)
    assert "showing step 5" in page.locator("[data-testid='stMain']").first.inner_text()
    page.get_by_role("button", name="Step ▶").first.click()
    wait_for_idle(page)
    assert "showing step 6" in page.locator("[data-testid='stMain']").first.inner_text()
    page.screenshot(path=os.path.join(SHOTS, "replay.png"), full_page=True)


def test_diffusion_measured_setting_side_by_side_in_browser(session):
    """The teacher's demo: one click sets smol-diffusion-fast / threshold 0.7 / one block of 64, then both rules
    run on the prompt side by side (one token per step on the left)."""
    url, page = session
    page.goto(f"{url}/Diffusion")
    page.get_by_role("button", name="Use the measured ~2x setting").first.click()
    wait_for_idle(page)
    no_exception(page)
    page.mouse.move(5, 5)       # the button's help tooltip would cover the tabs
    time.sleep(0.5)
    page.get_by_role("tab", name="Two rules side by side").first.click()
    page.get_by_role("button", name="Run both on the prompt").first.click()
    page.locator(".js-plotly-plot").first.wait_for()
    # two live 64-position grids re-render while both workers run: on 2 cores, shared with chromium, the
    # one-token-per-step side can take minutes (the two runs alone, concurrently, take well under a minute)
    wait_finished(page, timeout_s=720)
    wait_for_idle(page)
    body = page.locator("[data-testid='stMain']").first.inner_text()
    assert body.count("done") >= 2, body[-1500:]
    assert "smol-diffusion-fast" in page.locator("[data-testid='stSidebar']").first.inner_text()
    no_exception(page)
    page.mouse.move(5, 5)
    time.sleep(0.5)
    page.screenshot(path=os.path.join(SHOTS, "diffusion_side_by_side.png"), full_page=True)


def test_hostile_links_show_messages_not_tracebacks(session):
    """Odd URL parameters and a page bug path: a message on the page, never a traceback."""
    url, page = session
    for query in ("trace=autoregressive&step=%C2%B2", "trace=%3Cimg%20src%3Dx%3E&step=-3",
                  "trace=autoregressive&step=99999999999999999999", "step=1&step=2&trace=nope"):
        page.goto(f"{url}/Replay?{query}")
        page.locator("[data-testid='stMain']").first.wait_for()
        wait_for_idle(page)
        no_exception(page)
        assert page.locator("[data-testid='stAlert'], [data-testid='stAlertContainer']").count() >= 1, query
        assert page.locator("main img[src='x']").count() == 0
    page.goto(f"{url}/Speculative")
    page.get_by_role("button", name="Generate").first.wait_for()
    wait_for_idle(page)
    page.get_by_label("tree", exact=True).first.click()
    page.get_by_role("option", name="custom...").first.click()
    wait_for_idle(page)
    box = page.get_by_label("tree (custom)").first
    box.fill("10000000")
    box.press("Enter")
    wait_for_idle(page)
    page.get_by_role("button", name="Generate").first.click()
    wait_for_idle(page)
    no_exception(page)
    assert "more than 256 nodes" in page.locator("[data-testid='stMain']").first.inner_text()


LIVE_FIGURES = re.compile(r"live view: redrawn in \d+ ms|The figures are drawn every \d+ s while the run is live")


def test_progress_bar_while_live(session):
    """While a run is live: a progress bar with steps / tokens done, compute tokens/s and the time left."""
    url, page = session
    page.goto(f"{url}/Autoregressive")
    page.get_by_role("button", name="Generate").first.wait_for()
    wait_for_idle(page)
    set_max_tokens(page, 96)
    page.get_by_role("button", name="Generate").first.click()
    # the status, progress bar and newest tokens of a live run: in the live status component (ui/live_feed.py),
    # updated in the browser without a page rerun
    end = time.time() + 120
    text, steps_seen = "", set()
    while time.time() < end:
        text = live_text(page)
        steps_seen.update(re.findall(r"running · showing step (\d+)", text))
        if "tokens/s (compute)" in text and " left" in text and LIVE_FIGURES.search(text) and len(steps_seen) >= 3:
            break
        time.sleep(0.3)
    assert re.search(r"\d+ / 96 tokens", text) and "tokens/s (compute)" in text and " left" in text, text[:800]
    assert len(steps_seen) >= 3, f"the live status should follow the run: saw steps {sorted(steps_seen)}"
    if feed_frames(page):      # the live status component (DECODING_LAB_LIVE_FEED=1)
        width = feed_frames(page)[0].locator("#fill").evaluate("e => parseFloat(e.style.width)")
        assert 0 < width < 100, width
    else:
        assert page.locator("[data-testid='stProgress']").count() >= 1
    # the figures: redrawn on their timer, or (the page run that started the run) said when they come
    assert LIVE_FIGURES.search(text), text[-800:]
    no_exception(page)
    page.mouse.move(5, 5)
    page.screenshot(path=os.path.join(SHOTS, "live_progress.png"), full_page=False)
    wait_finished(page)
    no_exception(page)


def test_a_lesson_in_browser(session):
    """A teacher's walk through the speculative lesson, presenter view on, no model needed."""
    url, page = session
    page.goto(f"{url}/Lessons?lesson=speculative")
    page.get_by_role("button", name="Next ▶").first.wait_for()
    wait_for_idle(page)
    page.get_by_text("presenter view (large text)").first.click()
    wait_for_idle(page)
    n = 5
    for k in range(1, n + 1):
        main = page.locator("[data-testid='stMain']").first.inner_text()
        assert f"part {k} of {n}" in main, main[:500]
        no_exception(page)
        if k == 3:   # the rejected draft and its resample
            page.locator(".js-plotly-plot").first.wait_for()
            page.mouse.move(5, 5)
            time.sleep(0.5)
            page.screenshot(path=os.path.join(SHOTS, "lesson.png"), full_page=True)
        if k < n:
            page.get_by_role("button", name="Next ▶").first.click()
            wait_for_idle(page)
    end = time.time() + 10
    while "part=5" not in page.url and time.time() < end:   # the address bar follows the page (shareable)
        time.sleep(0.2)
    assert "part=5" in page.url and "lesson=speculative" in page.url
