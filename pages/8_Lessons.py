"""Lessons: a class walked through each family in a few steps, each on a recorded step that shows its point.
Works with no model loaded (shipped traces); a link to the live page lets the class try it."""
from pathlib import Path

import streamlit as st
from streamlit.errors import StreamlitPageNotFoundError

from engine import trace as T
from ui import common
from ui.lessons import BY_KEY, LESSONS, TRACES
from viz.safe import md_text

PRESENTER_CSS = """<style>
[data-testid="stMain"] p, [data-testid="stMain"] li { font-size: 1.45rem !important; line-height: 1.5; }
[data-testid="stMain"] h1 { font-size: 3rem !important; }
[data-testid="stMain"] h2, [data-testid="stMain"] h3 { font-size: 2.2rem !important; }
</style>"""


@st.cache_resource(show_spinner=False, max_entries=32)
def lesson_trace(name: str) -> T.Trace:
    return T.load(TRACES / f"{name}.json")


def _int_param(value, n: int) -> tuple[int, str | None]:
    """A part number from the URL: 1..n, or 1 with a message."""
    text = str(value or "").strip()
    if not (text.isascii() and text.isdigit()) or len(text) > 6 or not 1 <= int(text) <= n:
        return 1, f"There is no part {text[:20]!r} in this lesson (it has {n}); showing part 1."
    return int(text), None


def choose() -> tuple:
    qp = st.query_params
    keys = [lesson.key for lesson in LESSONS]
    notes = []
    want = qp.get("lesson")
    if want is not None and want not in BY_KEY:
        notes.append(f"There is no lesson {str(want)[:40]!r}; pick one in the sidebar.")
        want = None
    if "lesson_key" not in st.session_state or (want and st.session_state.get("lesson_from_url") != want):
        st.session_state["lesson_key"] = want or keys[0]
        st.session_state["lesson_from_url"] = want
        part, note = _int_param(qp.get("part", "1"), len(BY_KEY[st.session_state["lesson_key"]].parts))
        st.session_state["lesson_part"] = part
        if note and qp.get("part") is not None:
            notes.append(note)
    with st.sidebar:
        st.header("Lesson")
        key = st.radio("lesson", keys, key="lesson_key", format_func=lambda k: BY_KEY[k].title,
                       label_visibility="collapsed", on_change=lambda: st.session_state.update(lesson_part=1))
        st.toggle("presenter view (large text)", key="lesson_presenter")
    return BY_KEY[key], notes


def _go(part: int) -> None:
    st.session_state["lesson_part"] = part


def navigation(lesson, part_no: int) -> None:
    n = len(lesson.parts)
    c1, c2, c3 = st.columns([1.4, 1.4, 5])
    # callbacks, not st.rerun(): the state changes before the run, so one run draws the part and sets the link
    c1.button("◀ Previous", key="lesson_prev", disabled=part_no <= 1, on_click=_go, args=(part_no - 1,))
    c2.button("Next ▶", key="lesson_next", disabled=part_no >= n, on_click=_go, args=(part_no + 1,))
    c3.progress(part_no / n, text=f"part {part_no} of {n}")


def show_part(lesson, part_no: int) -> None:
    part = lesson.parts[part_no - 1]
    tr = lesson_trace(part.trace)
    steps = tr.steps
    cur = part.find(steps, tr) if steps else 0
    st.subheader(f"{part_no}. {part.title}")
    st.markdown(part.text)
    if part.look:
        st.info("Look at: " + part.look)
    for i, fig in enumerate(part.figures(steps, cur, tr)):
        if isinstance(fig, str):
            st.markdown(fig, unsafe_allow_html=True)      # viz builders escape every trace string
        elif hasattr(fig, "to_plotly_json"):
            st.plotly_chart(fig, key=f"lesson_{lesson.key}_{part_no}_{i}", width="stretch")
        else:
            st.dataframe(fig, hide_index=True, width="stretch")
    st.caption(f"Recorded with the embedded SmolLM2-135M: {tr.meta.get('method')} on this prompt, step {cur} of "
               f"{len(steps)} (examples/lessons/{part.trace}.json).")
    st.text(f"prompt: {str(tr.meta.get('prompt', ''))[:300]}")
    label = f"Try it live on the {lesson.page.replace('_', ' ')} page"
    try:
        st.page_link(f"pages/{_page_file(lesson.page)}", label=label, icon="▶")
    except StreamlitPageNotFoundError:   # the page run on its own (tests): a plain link
        st.markdown(f"[{label}](./{lesson.page})")


def _page_file(page: str) -> str:
    """The file under pages/ of the page named `page` (its name after the number prefix)."""
    for f in sorted(Path(__file__).resolve().parent.glob("*.py")):
        if f.stem.split("_", 1)[-1] == page:
            return f.name
    raise ValueError(f"no page named {page!r}")


def main():
    common.app_navigation()        # the sidebar of app.py's navigation, also on a fresh server's first request
    st.set_page_config(page_title="Lessons · decoding lab", layout="wide")
    lesson, notes = choose()
    if st.session_state.get("lesson_presenter"):
        st.markdown(PRESENTER_CSS, unsafe_allow_html=True)   # static CSS, no trace text
    st.title(lesson.title)
    for note in notes:
        st.warning(md_text(note))
    part_no = max(1, min(int(st.session_state.get("lesson_part", 1)), len(lesson.parts)))
    st.query_params["lesson"] = lesson.key      # the address bar follows the page: a shareable link
    st.query_params["part"] = str(part_no)
    navigation(lesson, part_no)
    show_part(lesson, part_no)


common.run_page(main, "lesson")
