"""The live status component (ui/live_feed.py, DECODING_LAB_LIVE_FEED=1) in a real browser: it follows a run
step by step with no page rerun, shows the progress bar, and the page redraws the run once it ends."""
from __future__ import annotations

import os
import re
import shutil
import time

import pytest

from tests.browser import browser, feed_frames, live_text, no_exception, streamlit_server, wait_for_idle
from tests.test_browser import set_max_tokens

pytestmark = [pytest.mark.browser,
              pytest.mark.skipif(not shutil.which("chromium") and not os.path.exists("/usr/bin/chromium"),
                                 reason="Debian chromium is not installed (.ci/run installs it)")]


def test_the_component_follows_a_run_and_hands_back_to_the_page():
    with streamlit_server(live_feed="1") as url, browser() as b:
        page = b.new_page(viewport={"width": 1500, "height": 1100})
        page.set_default_timeout(120_000)
        page.goto(f"{url}/Autoregressive")
        page.get_by_role("button", name="Generate").first.wait_for(timeout=300_000)
        wait_for_idle(page)
        set_max_tokens(page, 48)
        page.get_by_role("button", name="Generate").first.click()
        seen, width, end = set(), None, time.time() + 240
        while time.time() < end:
            seen.update(re.findall(r"running · showing step (\d+)", live_text(page)))
            if feed_frames(page) and width is None and len(seen) >= 2:
                width = feed_frames(page)[0].locator("#fill").evaluate("e => parseFloat(e.style.width)")
            main = page.locator("[data-testid='stMain']").first.inner_text()
            if re.search(r"\bdone · showing step", main):
                break
            time.sleep(0.3)
        assert len(seen) >= 3, f"the component should show the run's steps as they come: {sorted(seen)}"
        assert width is not None and 0 < width < 100, width
        main = page.locator("[data-testid='stMain']").first.inner_text()
        assert re.search(r"\bdone · showing step", main), main[-800:]     # the page redrew the run at its end
        # the component's element goes when the redrawing page run ends (Streamlit keeps an element the running
        # script has not reached yet): wait for that run, then for the frame to detach
        wait_for_idle(page)
        gone = time.time() + 30
        while feed_frames(page) and time.time() < gone:
            time.sleep(0.3)
        assert not feed_frames(page), "no live status component once the run has ended"
        no_exception(page)
