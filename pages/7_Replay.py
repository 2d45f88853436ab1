"""Replay a saved trace with the same figures as the live views, with no model loaded."""
from pathlib import Path

import streamlit as st

from engine import trace as T
from engine.runner import TraceView
from ui import controls, renderers
from viz.safe import md_text

KEY = "runner_replay"
EXAMPLES = Path(__file__).resolve().parent.parent / "examples" / "traces"


def query_value(name: str, warn: bool = True) -> str | None:
    """The first value of a URL parameter; a link may repeat it, so say which one is used."""
    values = st.query_params.get_all(name)
    if len(values) > 1 and warn:
        st.warning(f"The link gives ?{name}= {len(values)} times; the first value is used.")
    return values[0] if values else None


def example_index(want: str | None, examples: list[str], warn: bool = True) -> int:
    """Which example ?trace= asks for (the first one when it names none of them)."""
    if want is None or want in examples:
        return examples.index(want) if want else 0
    if warn:
        st.warning(f"There is no example trace named \u201c{md_text(want, 60)}\u201d; showing "
                   f"{md_text(examples[0])}. The examples are: {md_text(', '.join(examples))}.")
    return 0


def start_step(raw: str | None, n: int) -> tuple[int, str | None]:
    """The step ?step= asks for in a trace of n steps, and a warning when it had to be changed."""
    if raw is None or n == 0:
        return 0, None
    s = raw.strip()
    if not (s.isascii() and s.isdecimal()):  # not str.isdigit: '²'.isdigit() is True and int('²') fails
        return 0, f"?step= must be a step number from 0 to {n - 1}, not \u201c{md_text(raw, 40)}\u201d; showing step 0."
    if len(s) > 9 or int(s) > n - 1:
        return n - 1, (f"This trace has {n} steps (0 to {n - 1}); step {md_text(s, 20)} is past its end, so the "
                       "last step is shown.")
    return int(s), None


st.set_page_config(page_title="Replay · decoding lab", layout="wide")
st.title("Replay")
st.caption("Scrub through a saved trace with the live views' figures. No model is loaded. "
           "Share a link to a step: `?trace=<example>&step=<n>` opens an example trace at that step.")

examples = sorted(p.stem for p in EXAMPLES.glob("*.json"))
source = st.radio("Trace", ["example", "upload"], horizontal=True, key="replay_source",
                  index=0 if examples else 1)
loaded, label = None, None
try:
    if source == "example":
        if not examples:
            st.info("No example traces are shipped in examples/traces/.")
        else:
            first_open = "replay_example" not in st.session_state  # the link's ?trace= only picks the first
            idx = example_index(query_value("trace", warn=first_open), examples, warn=first_open)
            name = st.selectbox("example", examples, index=idx, key="replay_example")
            label = f"example:{name}"
            if st.session_state.get("replay_label") != label:
                loaded = T.load(EXAMPLES / f"{name}.json")
    else:
        up = st.file_uploader("trace JSON", type=["json"], key="replay_upload")
        if up is not None:
            label = f"upload:{up.name}:{up.size}"
            if st.session_state.get("replay_label") != label:
                if up.size > T.MAX_TRACE_BYTES:
                    raise T.TraceError(f"The file is {up.size / 1e6:.1f} MB; traces are limited to "
                                       f"{T.MAX_TRACE_BYTES // 2**20} MB.")
                loaded = T.loads(up.getvalue())
except T.TraceError as e:
    st.error(f"This file cannot be replayed: {md_text(e, 2000)}")
    label = None
except OSError as e:
    st.error(f"Could not read the trace: {md_text(e, 2000)}")
    label = None

if loaded is not None:
    step, warning = start_step(query_value("step"), len(loaded.steps))
    if warning:
        st.warning(warning)
    st.session_state[KEY] = TraceView(loaded, cursor=step)
    st.session_state["replay_label"] = label

r = controls.runner(KEY)
if r is not None and label is not None and st.session_state.get("replay_label") == label:
    m = r.trace.meta
    st.markdown(f"**{md_text(m.get('method'))}** on {md_text(m.get('model'))} · {len(r.trace.steps)} steps · "
                f"prompt: _{md_text(m.get('prompt', ''), 200)}_")
    if not r.trace.steps:
        st.info("This trace has no steps to show.")
    controls.step_controls(KEY)
    if r.cursor is not None:
        st.query_params["step"] = str(r.cursor)
        if source == "example":
            st.query_params["trace"] = label.split(":", 1)[1]
    controls.live(KEY, lambda rr: renderers.render(rr, "replay"))
    with st.expander("Final output"):
        st.text(r.trace.final_text)
