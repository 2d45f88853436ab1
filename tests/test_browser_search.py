"""Real-browser checks of the Search page (headless Debian chromium, a real `streamlit run` server): every search
method is chosen in the sidebar, runs a short generation live, draws its figures with no exception box and no
traceback text, steps back and forward, and is saved as docs/screenshots/search_<method>.png (the README shows
them). The context-aware run is the page's demo: its answer follows the context (Rome), not the model's prior."""
import os
import re
import shutil
import time

import pytest

from engine.methods import all_methods
from tests.browser import SHOTS, browser, no_exception, streamlit_server, wait_for_idle
from tests.test_browser import set_max_tokens, wait_finished

pytestmark = pytest.mark.skipif(not shutil.which("chromium") and not os.path.exists("/usr/bin/chromium"),
                                reason="Debian chromium is not installed (.ci/run installs it)")

# method -> (max new tokens, text the finished page must show, text the screenshot scrolls to)
METHODS = {"beam": (12, "n-best list", "running beams"), "contrastive": (16, "penalty", "Up to this step"),
           "cad": (20, "Rome", "Context-aware decoding: the contrast"), "cautious": (24, "trials", None),
           "grammar": (40, "allowed", "wanted vs got")}


@pytest.fixture(scope="module")
def session():
    os.makedirs(SHOTS, exist_ok=True)
    with streamlit_server() as url, browser() as b:
        page = b.new_page(viewport={"width": 1500, "height": 1200})
        page.set_default_timeout(180_000)
        page.goto(url)
        page.get_by_text("Loaded", exact=False).filter(visible=True).first.wait_for(timeout=180_000)
        yield url, page


@pytest.mark.parametrize("method", [m for m in METHODS if m in all_methods()])
def test_search_method_in_browser(session, method):
    url, page = session
    n, expect, anchor = METHODS[method]
    page.goto(f"{url}/Search")
    page.get_by_role("button", name="Generate").first.wait_for()
    wait_for_idle(page)
    page.get_by_label("search method", exact=True).first.click()
    page.get_by_role("option", name=re.compile(f"^{method} ")).first.click()
    wait_for_idle(page)
    no_exception(page)
    set_max_tokens(page, n)
    page.get_by_role("button", name="Generate").first.click()
    page.locator(".js-plotly-plot, [data-testid='stMarkdownContainer'] strong").first.wait_for()
    body = wait_finished(page)
    assert "The run stopped with an error" not in body, body[-1500:]
    wait_for_idle(page)
    page.locator(".js-plotly-plot").first.wait_for()
    assert expect in page.locator("[data-testid='stMain']").first.inner_text()
    back = page.get_by_role("button", name="◀ Back")
    if back.count() and back.first.is_enabled():
        back.first.click()
        wait_for_idle(page)
        page.get_by_role("button", name="Step ▶").first.click()
        wait_for_idle(page)
    if method == "beam":   # the page's runner answers J / L (ui/controls.py shortcuts)
        main = page.locator("[data-testid='stMain']").first
        shown = int(re.search(r"showing step (\d+)", main.inner_text()).group(1))
        page.mouse.click(5, 300)            # focus on the page, not in a text box
        page.keyboard.press("j")
        wait_for_idle(page)
        assert f"showing step {shown - 1}" in main.inner_text()
        page.keyboard.press("l")
        wait_for_idle(page)
        assert f"showing step {shown}" in main.inner_text()
    no_exception(page)
    if anchor:   # the method's own block, which is below the shared AR figures
        page.get_by_text(anchor).first.scroll_into_view_if_needed()
    page.mouse.move(5, 5)
    time.sleep(0.5)
    page.screenshot(path=os.path.join(SHOTS, f"search_{method}.png"))
