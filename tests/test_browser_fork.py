"""What-if forks in a real browser (headless Debian chromium): on the Autoregressive page generate 12 tokens, go
to step 5, click a candidate's bar in the top-k chart, see the branch decode beside the original and finish, save
docs/screenshots/fork.png, download the trace (original + branch) and open it in Replay with both runs."""
import json
import os
import re
import shutil
import time

import pytest

from tests.browser import SHOTS, browser, live_text, no_exception, streamlit_server, wait_for_idle

pytestmark = pytest.mark.skipif(not shutil.which("chromium") and not os.path.exists("/usr/bin/chromium"),
                                reason="Debian chromium is not installed (.ci/run installs it)")


def main_text(page) -> str:
    return live_text(page)   # the main area, a live run's status component included


def wait_text(page, pattern: str, timeout_s: float = 120, absent: str | None = None) -> str:
    end = time.time() + timeout_s
    body = ""
    while time.time() < end:
        no_exception(page)
        body = main_text(page)
        if re.search(pattern, body) and not (absent and re.search(absent, body)):
            return body
        time.sleep(0.4)
    page.screenshot(path=os.path.join(SHOTS, "_fork_timeout.png"), full_page=True)
    raise AssertionError(f"{pattern!r} did not appear: " + body[-1500:])


def candidate_bar(page):
    """The bounding box of a non-chosen candidate's bar in the chart titled 'Step 5: chose ...' (the widest one)."""
    chart = page.locator(".js-plotly-plot", has_text="Step 5: chose").first
    chart.scroll_into_view_if_needed()
    time.sleep(0.5)
    boxes = []
    traces = chart.locator(".trace.bars")
    for t in range(traces.count()):
        points = traces.nth(t).locator(".point path")
        for i in range(1, points.count()):       # sorted by the model's p: index 0 is (greedy) the chosen token
            b = points.nth(i).bounding_box()
            if b and b["width"] > 3:
                boxes.append(b)
    assert boxes, "no candidate bars to click"
    return max(boxes, key=lambda b: b["width"])


def test_fork_in_the_browser(tmp_path):
    os.makedirs(SHOTS, exist_ok=True)
    with streamlit_server() as url, browser() as b:
        page = b.new_page(viewport={"width": 1500, "height": 1100}, accept_downloads=True)
        page.set_default_timeout(180_000)
        page.goto(url)
        page.get_by_text("Loaded", exact=False).filter(visible=True).first.wait_for(timeout=180_000)
        page.goto(f"{url}/Autoregressive")
        page.get_by_role("button", name="Generate").first.wait_for()
        wait_for_idle(page)
        box = page.get_by_role("spinbutton", name=re.compile("max new tokens", re.I)).first
        box.fill("12")
        box.press("Enter")
        wait_for_idle(page)
        page.get_by_text("ignore end-of-text").first.click()
        wait_for_idle(page)
        page.get_by_role("button", name="Generate").first.click()
        wait_text(page, r"\bdone\b.*showing step 11", absent=r"· running")
        wait_for_idle(page)
        for _ in range(6):                        # step 11 -> step 5
            page.get_by_role("button", name="◀ Back").first.click()
            wait_for_idle(page)
        wait_text(page, r"showing step 5 ")
        page.locator(".js-plotly-plot", has_text="Step 5: chose").first.wait_for()
        bar = candidate_bar(page)
        page.mouse.click(bar["x"] + bar["width"] / 2, bar["y"] + bar["height"] / 2)
        wait_for_idle(page)
        body = wait_text(page, r"branch 1 · .*done", timeout_s=120)
        assert "first divergence at position 5" in body, body[-2000:]
        wait_for_idle(page)
        no_exception(page)
        head = page.get_by_text("What-if branches", exact=True).first
        head.evaluate("el => el.scrollIntoView({block: 'start'})")
        page.mouse.move(5, 5)
        time.sleep(1.0)
        page.screenshot(path=os.path.join(SHOTS, "fork.png"))
        with page.expect_download() as dl:
            page.get_by_role("button", name=re.compile("Download trace JSON")).first.click()
        path = tmp_path / "fork.json"
        dl.value.save_as(path)
        saved = json.loads(path.read_text())
        assert saved["schema_version"] == 2 and len(saved["branches"]) == 1
        f = saved["branches"][0]["meta"]["fork"]
        assert f["parent"] == 0 and f["at_step"] == 5 and f["edit"]["token"]["id"] != saved["steps"][5]["token_id"]
        # Replay: upload the file, see the tree and both runs, no model needed
        page.goto(f"{url}/Replay")
        wait_for_idle(page)
        page.get_by_text("upload", exact=True).first.click()
        wait_for_idle(page)
        page.locator("[data-testid='stFileUploaderDropzoneInput'], input[type=file]").first.set_input_files(str(path))
        wait_text(page, r"holds the original run and 1 what-if branch")
        wait_for_idle(page)
        page.get_by_role("combobox", name=re.compile("^run")).first.click()
        page.get_by_role("option", name=re.compile("branch 1")).first.click()
        wait_for_idle(page)
        body = wait_text(page, r"first divergence at position 5")
        assert "branch=1" in page.url, page.url
        no_exception(page)
