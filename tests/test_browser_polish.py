"""Real-browser checks of issue 30's polish (headless Debian chromium, a real `streamlit run` server; the harness
is tests/browser.py, the run helpers tests/test_browser.py's):

- the grid views in the dark theme (chromium's prefers-color-scheme: dark, which Streamlit follows), saved as
  docs/screenshots/*_dark.png, with no white figure background;
- no chart title wider than its figure (each title's drawn width against the figure's, and the title's lines
  against viz.layout's limits);
- a Replay link copied after an upload: it does not open an example, it says to upload the file, and opens
  the file at the linked step; playback advances the step at the chosen speed;
- the home page is "Home" in the sidebar; a linked model is offered, not loaded; a refused number says why.

The grid views come from Replay's example traces (no model compute), so the whole file takes about a minute.
"""
import os
import re
import shutil
import time
from pathlib import Path

import pytest

from tests.browser import ROOT, SHOTS, browser, no_exception, streamlit_server, wait_for_idle

pytestmark = pytest.mark.skipif(not shutil.which("chromium") and not os.path.exists("/usr/bin/chromium"),
                                reason="Debian chromium is not installed (.ci/run installs it)")

# Replay example -> (step to show, screenshot name)
DARK_VIEWS = [("diffusion_low_confidence", 12, "diffusion_dark"), ("jacobi", 20, "jacobi_dark"),
              ("lookahead", 8, "lookahead_dark"), ("kv_h2o", 30, "kv_cache_dark"),
              ("speculative_prompt_lookup", 3, "speculative_dark")]

# every figure's title: the drawn width of its text against the figure's width, and its lines' lengths
TITLES_JS = """() => [...document.querySelectorAll('.js-plotly-plot')].map(el => {
  const svg = el.querySelector('svg.main-svg');
  const t = el.querySelector('.g-gtitle text, .gtitle');
  const box = t ? t.getBoundingClientRect() : null, frame = svg ? svg.getBoundingClientRect() : null;
  return {text: (el.layout && el.layout.title && el.layout.title.text) || '',
          left: box ? box.left - frame.left : 0, right: box ? box.right - frame.left : 0,
          top: box ? box.top - frame.top : 0, bottom: box ? box.bottom - frame.top : 0,
          width: frame ? frame.width : 0, margin: el._fullLayout ? el._fullLayout.margin.t : 0,
          paper: el._fullLayout ? el._fullLayout.paper_bgcolor : '', plot: el._fullLayout ? el._fullLayout.plot_bgcolor : ''};
})"""


@pytest.fixture(scope="module")
def server():
    os.makedirs(SHOTS, exist_ok=True)
    with streamlit_server() as url, browser() as b:
        yield url, b


@pytest.fixture(scope="module")
def dark(server):
    url, b = server
    ctx = b.new_context(viewport={"width": 1500, "height": 1100}, color_scheme="dark")
    page = ctx.new_page()
    page.set_default_timeout(120_000)
    yield url, page
    ctx.close()


@pytest.fixture(scope="module")
def light(server):
    url, b = server
    ctx = b.new_context(viewport={"width": 1500, "height": 1100}, color_scheme="light")
    page = ctx.new_page()
    page.set_default_timeout(180_000)
    yield url, page
    ctx.close()


def main_text(page) -> str:
    return page.locator("[data-testid='stMain']").first.inner_text()


def open_replay(page, url, query):
    page.goto(f"{url}/Replay?{query}")
    page.locator("[data-testid='stMain']").first.wait_for()
    wait_for_idle(page)
    no_exception(page)


def check_titles(page, where: str) -> list[dict]:
    from viz import layout as L
    titles = page.evaluate(TITLES_JS)
    assert titles, f"{where}: no figure"
    for t in titles:
        lines = [re.sub(r"<[^>]+>", "", ln) for ln in t["text"].split("<br>")]
        assert len(lines[0]) <= L.TITLE_CHARS and all(len(ln) <= L.SUBTITLE_CHARS for ln in lines), (where, lines)
        assert t["left"] >= -1 and t["right"] <= t["width"] + 1, f"{where}: the title is cut at the edge: {t}"
        assert t["top"] >= 0, f"{where}: the title is cut at the top: {t}"
        assert t["bottom"] <= t["margin"] + 2, f"{where}: the title runs into the plot: {t}"
    return titles


@pytest.mark.parametrize("trace, step, shot", DARK_VIEWS, ids=[v[2] for v in DARK_VIEWS])
def test_grid_views_in_the_dark_theme(dark, trace, step, shot):
    url, page = dark
    open_replay(page, url, f"trace={trace}&step={step}")
    page.locator(".js-plotly-plot").first.wait_for()
    time.sleep(1.0)       # plotly draws after the element appears
    nav = page.locator("[data-testid='stSidebarNav']").first.inner_text()
    assert "Home" in nav and not re.search(r"^\s*app\s*$", nav, re.M), nav
    bg = page.evaluate("() => getComputedStyle(document.querySelector('.stApp')).backgroundColor")
    assert bg.startswith("rgb(") and sum(int(v) for v in re.findall(r"\d+", bg)[:3]) < 150, \
        f"the page should be dark, its background is {bg}"
    for t in check_titles(page, shot):
        assert t["paper"] in ("rgba(0, 0, 0, 0)", "rgba(0,0,0,0)", "transparent"), (shot, t)
        assert t["plot"] not in ("#FFFFFF", "#ffffff", "white", "rgb(255, 255, 255)"), (shot, t)
    page.mouse.move(5, 5)
    # the grid, in view (Streamlit scrolls its main block itself: a full-page shot shows only the top)
    page.locator(".js-plotly-plot").first.evaluate("el => el.scrollIntoView({block: 'start'})")
    page.mouse.wheel(0, -160)
    time.sleep(0.5)
    page.screenshot(path=os.path.join(SHOTS, f"{shot}.png"))


def test_titles_fit_in_the_light_theme(light):
    url, page = light
    for trace, step, shot in DARK_VIEWS + [("autoregressive", 5, "ar")]:
        open_replay(page, url, f"trace={trace}&step={step}")
        page.locator(".js-plotly-plot").first.wait_for()
        time.sleep(0.8)
        check_titles(page, shot)


def _upload(page, path: Path):
    page.get_by_text("upload", exact=True).first.click()
    wait_for_idle(page)
    page.locator("[data-testid='stFileUploaderDropzoneInput'], input[type=file]").first.set_input_files(str(path))
    page.locator(".js-plotly-plot").first.wait_for()
    wait_for_idle(page)
    no_exception(page)


def test_a_replay_link_after_an_upload_opens_the_same_trace_or_says_how(light, server):
    url, page = light
    open_replay(page, url, "trace=autoregressive&step=2")
    _upload(page, Path(ROOT) / "examples" / "traces" / "jacobi.json")
    page.get_by_role("button", name="Step ▶").first.click()
    wait_for_idle(page)
    page.get_by_role("button", name="Step ▶").first.click()
    wait_for_idle(page)
    end = time.time() + 10
    while "step=2" not in page.url and time.time() < end:
        time.sleep(0.2)
    link = page.url
    assert "trace=" not in link and "source=upload" in link and "step=2" in link, link
    assert "Jacobi" in main_text(page) or "jacobi" in main_text(page)
    # whoever opens the copied link: no example in its place, a message, and the file opens at step 2
    _, b = server
    ctx = b.new_context(viewport={"width": 1500, "height": 1100})
    other = ctx.new_page()
    other.set_default_timeout(120_000)
    try:
        other.goto(link)
        other.locator("[data-testid='stMain']").first.wait_for()
        wait_for_idle(other)
        no_exception(other)
        text = main_text(other)
        assert "upload the same file here to see it at step 2" in text, text[:800]
        assert other.locator(".js-plotly-plot").count() == 0, "no other trace is shown in its place"
        _upload(other, Path(ROOT) / "examples" / "traces" / "jacobi.json")
        assert "showing step 2" in main_text(other)
    finally:
        ctx.close()


def test_replay_plays_at_the_chosen_speed(light):
    url, page = light
    open_replay(page, url, "trace=autoregressive&step=0")
    assert page.get_by_role("button", name="Cancel").count() == 0
    assert page.get_by_role("button", name="Resume").count() == 0
    page.get_by_role("button", name="Play").first.click()
    page.get_by_text("playing at 1 steps/s").first.wait_for(timeout=20_000)
    t0 = time.time()
    time.sleep(6)
    m = re.search(r"showing step (\d+)", main_text(page))
    elapsed = time.time() - t0
    assert m and 2 <= int(m.group(1)) <= elapsed + 2, (m and m.group(0), elapsed)
    end = time.time() + 10
    while f"step={m.group(1)}" not in page.url and time.time() < end:
        time.sleep(0.2)
    assert re.search(r"step=\d+", page.url)
    page.keyboard.press("k")                      # K: pause, as in a video player
    page.get_by_role("button", name="Play").first.wait_for(timeout=20_000)
    wait_for_idle(page)
    stopped = re.search(r"showing step (\d+)", main_text(page)).group(1)
    time.sleep(2.5)
    assert re.search(r"showing step (\d+)", main_text(page)).group(1) == stopped, "paused: no more steps"
    page.keyboard.press("l")                      # L: the next step
    wait_for_idle(page)
    end = time.time() + 10
    while f"showing step {int(stopped) + 1}" not in main_text(page) and time.time() < end:
        time.sleep(0.2)
    assert f"showing step {int(stopped) + 1}" in main_text(page)
    no_exception(page)


def test_home_is_named_home_and_a_linked_model_waits_for_a_click(light):
    url, page = light
    page.goto(f"{url}/?model=HuggingFaceTB/SmolLM2-360M-Instruct")
    page.get_by_text("This link asks for the model", exact=False).first.wait_for(timeout=180_000)
    page.get_by_text("Loaded", exact=False).filter(visible=True).first.wait_for(timeout=180_000)
    nav = page.locator("[data-testid='stSidebarNav']").first.inner_text()
    assert "Home" in nav and not re.search(r"^\s*app\s*$", nav, re.M), nav
    assert "smollm2-135m-instruct" in main_text(page), "the embedded model stays until the click"
    assert page.get_by_role("button", name="Load the linked model").count() == 1
    no_exception(page)
    page.mouse.move(5, 5)
    page.screenshot(path=os.path.join(SHOTS, "home_model_link.png"), full_page=False)


def test_a_refused_number_says_why(light):
    url, page = light
    page.goto(f"{url}/Autoregressive")
    page.get_by_role("button", name="Generate").first.wait_for()
    wait_for_idle(page)
    box = page.get_by_role("spinbutton", name=re.compile("max new tokens", re.I)).first
    box.fill("0")
    box.press("Enter")
    wait_for_idle(page)
    side = page.locator("[data-testid='stSidebar']").first.inner_text()
    assert "0 was refused" in side and "1..1024" in side, side[:1500]
    assert box.input_value() == "64"
    no_exception(page)
