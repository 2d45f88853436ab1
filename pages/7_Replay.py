"""Replay a saved trace with the same figures as the live views, with no model loaded."""
from pathlib import Path

import streamlit as st

from engine import trace as T
from engine.runner import Runner
from ui import controls, renderers

KEY = "runner_replay"
EXAMPLES = Path(__file__).resolve().parent.parent / "examples" / "traces"

st.set_page_config(page_title="Replay · decoding lab", layout="wide")
st.title("Replay")
st.caption("Scrub through a saved trace with the live views' figures. No model is loaded. "
           "Share a link to a step: `?trace=<example>&step=<n>` opens an example trace at that step.")

examples = sorted(p.stem for p in EXAMPLES.glob("*.json"))
qp = st.query_params
source = st.radio("Trace", ["example", "upload"], horizontal=True, key="replay_source",
                  index=0 if examples else 1)
loaded, label = None, None
try:
    if source == "example":
        if not examples:
            st.info("No example traces are shipped in examples/traces/.")
        else:
            want = qp.get("trace")
            idx = examples.index(want) if want in examples else 0
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
    st.error(f"This file cannot be replayed: {e}")
    label = None
except OSError as e:
    st.error(f"Could not read the trace: {e}")
    label = None

if loaded is not None:
    r = Runner(loaded, iter(()), start_paused=True)
    r.start()
    r.wait(5)
    step_q = qp.get("step")
    if step_q is not None and str(step_q).isdigit():
        r.jump(int(step_q))
    elif loaded.steps:
        r.jump(0)
    st.session_state[KEY] = r
    st.session_state["replay_label"] = label

r = controls.runner(KEY)
if r is not None and label is not None and st.session_state.get("replay_label") == label:
    m = r.trace.meta
    st.markdown(f"**{m.get('method')}** on `{m.get('model')}` · {len(r.trace.steps)} steps · "
                f"prompt: _{str(m.get('prompt', ''))[:200]}_")
    controls.step_controls(KEY)
    if r.cursor is not None:
        st.query_params["step"] = str(r.cursor)
        if source == "example":
            st.query_params["trace"] = label.split(":", 1)[1]
    controls.live(KEY, lambda rr: renderers.render(rr, "replay"))
    with st.expander("Final output"):
        st.text(r.trace.final_text)
