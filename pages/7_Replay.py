"""Replay a saved trace with the same figures as the live views, with no model loaded.

The address bar always says what is shown: `?trace=<example>&step=<n>` for an example; for an uploaded
trace (which lives only in the session that uploaded it) `?source=upload&step=<n>`, and whoever opens
that link is asked to upload the file. A trace with what-if branches (ui/branches.py) shows its tree and
one run at a time; `&branch=<n>` names the branch (0: the original). Playback steps through the trace at a chosen speed (a fragment on a
timer redraws the view); a replay computes nothing, so there is nothing to cancel.
"""
import time
from pathlib import Path

import streamlit as st

from engine import trace as T
from engine.runner import TraceView
from ui import branches, common, controls, renderers
from viz import export
from viz.safe import md_text

KEY = "runner_replay"
PLAY_KEY = "replay_playing"
SPEED_KEY = "replay_speed"
TIMING_KEY = "replay_render_s"
LINK_STEP_KEY = "replay_link_step"      # the link's ?step=, applied to the first trace the session opens
LINK_UPLOAD_KEY = "replay_link_upload"  # the link was copied while an uploaded trace was shown
LINK_BRANCH_KEY = "replay_link_branch"  # the link's ?branch=, applied like ?step=
TREE_KEY = "replay_tree"                # the loaded trace (the original, holding its what-if branches)
BRANCH_KEY = "replay_branch"            # which run of the tree is shown: 0 the original, n its n-th branch
SPEEDS = (0.5, 1.0, 2.0, 4.0, 8.0)      # steps per second
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


def start_branch(raw: str | None, n: int) -> tuple[int, str | None]:
    """The run ?branch= asks for in a trace with n branches (0: the original), and a warning when it cannot."""
    if raw is None:
        return 0, None
    s = raw.strip()
    if not (s.isascii() and s.isdecimal()) or len(s) > 9 or int(s) > n:
        what = f"branches 1 to {n} (0: the original)" if n else "no branches (0: the original)"
        return 0, f"This trace has {what}; \u201c{md_text(raw, 40)}\u201d is not one of them, so the original is shown."
    return int(s), None


def branch_selector(tree):
    """A trace with branches: its tree, which run to show (the URL's ?branch=), and that run beside its parent."""
    n = len(tree.branches)
    cur = int(st.session_state.get(BRANCH_KEY) or 0)
    st.markdown(f"This trace holds the original run and **{n}** what-if branch{'es' if n != 1 else ''}.")
    sel = st.selectbox("run", list(range(n + 1)), index=cur, key=f"replay_branch_sel_{cur}",
                       format_func=lambda i: branches.saved_label(tree, i)[:120])   # plain text (a select)
    if sel != cur:
        st.session_state[BRANCH_KEY] = sel
        st.session_state[KEY] = TraceView(branches.saved_runs(tree)[sel], cursor=0)
        st.session_state[PLAY_KEY] = False
        st.rerun()
    r = controls.runner(KEY)
    with st.expander("Branch tree", expanded=True):
        branches.replay_tree(tree, cur, r.cursor)
    return r


def set_url(source: str, name: str | None, cursor: int | None) -> None:
    """The address bar names what is shown, so a copied link opens it (or, for an upload, says what to do)."""
    qp = st.query_params
    want = {"trace": name} if source == "example" else {"source": "upload"}
    tree = st.session_state.get(TREE_KEY)
    if cursor is not None and getattr(tree, "branches", None):
        want["branch"] = str(st.session_state.get(BRANCH_KEY) or 0)
    if cursor is not None:
        want["step"] = str(cursor)
    for k in ("trace", "source", "branch", "step"):
        if k not in want and k in qp:
            del qp[k]
    for k, v in want.items():
        if qp.get_all(k) != [v]:
            qp[k] = v


def choose_source(examples: list[str]) -> str:
    first_open = "replay_source" not in st.session_state
    if first_open:
        st.session_state[LINK_STEP_KEY] = query_value("step")
        st.session_state[LINK_BRANCH_KEY] = query_value("branch")
        st.session_state[LINK_UPLOAD_KEY] = query_value("source", warn=False) == "upload"
    index = 1 if (not examples or st.session_state.get(LINK_UPLOAD_KEY)) else 0
    source = st.radio("Trace", ["example", "upload"], horizontal=True, key="replay_source", index=index)
    if st.session_state.get("replay_prev_source") not in (None, source):
        st.session_state[LINK_STEP_KEY] = None          # switched by hand: a new trace starts at step 0
        st.session_state[LINK_UPLOAD_KEY] = False
        st.session_state[PLAY_KEY] = False
    st.session_state["replay_prev_source"] = source
    return source


def load(source: str, examples: list[str]):
    """(trace newly loaded or None, label of what is shown or None, example name or None)."""
    loaded = label = name = None
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
            if up is None and st.session_state.get(LINK_UPLOAD_KEY):
                step = st.session_state.get(LINK_STEP_KEY)
                at = f" at step {md_text(step, 20)}" if step else ""
                st.info("This link was copied while an uploaded trace was shown. An uploaded trace stays in the "
                        "browser session that uploaded it, so a link cannot carry it: upload the same file here "
                        f"to see it{at}.")
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
    return loaded, label, name


def _pause() -> None:
    st.session_state[PLAY_KEY] = False


def _toggle_play() -> None:
    r = controls.runner(KEY)
    if r is None:
        return
    if st.session_state.get(PLAY_KEY):
        st.session_state[PLAY_KEY] = False
        return
    n = len(r.trace.steps)
    if r.cursor is not None and r.cursor >= n - 1:
        r.jump(0)                                   # at the end: play from the start
    st.session_state[PLAY_KEY] = True
    st.session_state["replay_last_tick"] = time.monotonic()


def _back() -> None:
    _pause()
    controls.runner(KEY).step_back()


def _forward() -> None:
    _pause()
    controls.runner(KEY).step_forward()


def step_controls(r) -> None:
    """Back / Step / Play-Pause (keys J / L / K, as in video players), the speed, and a jump slider."""
    n = len(r.trace.steps)
    playing = bool(st.session_state.get(PLAY_KEY))
    cols = st.columns([1, 1, 1, 2, 4])
    cols[0].button("◀ Back", key=f"{KEY}_back", help="the previous step (key J)", shortcut="J", on_click=_back,
                   disabled=r.cursor in (None, 0) or n == 0)
    cols[1].button("Step ▶", key=f"{KEY}_fwd", help="the next recorded step (key L)", shortcut="L", on_click=_forward,
                   disabled=n == 0)
    cols[2].button("⏸ Pause" if playing else "▶ Play", key=f"{KEY}_play", shortcut="K", on_click=_toggle_play,
                   help="play the recorded steps at the chosen speed, from the shown step (key K)",
                   disabled=n < 2)
    cols[3].select_slider("speed (steps per second)", SPEEDS, key=SPEED_KEY, label_visibility="collapsed",
                          format_func=lambda v: f"{v:g} steps/s", help="playback speed, in steps per second",
                          **({} if SPEED_KEY in st.session_state else {"value": 1.0}))
    if n > 1 and not playing:
        cur = r.cursor if r.cursor is not None else n - 1
        new = cols[4].slider("jump to step", 0, n - 1, cur, key=f"{KEY}_jump_{n}_{cur}", label_visibility="collapsed")
        if new != cur:
            r.jump(new)
            st.rerun()


def view(r, source: str, name: str | None) -> None:
    """The shown step, redrawn on a timer while playing (one step per tick)."""
    playing = bool(st.session_state.get(PLAY_KEY))
    speed = float(st.session_state.get(SPEED_KEY, 1.0))
    in_full_run = [True]

    @st.fragment(run_every=1.0 / speed if playing else None)
    def _view():
        rr = controls.runner(KEY)
        if rr is None:
            return
        n = len(rr.trace.steps)
        cur = rr.cursor if rr.cursor is not None else n - 1
        if playing and not in_full_run[0]:
            if cur >= n - 1:
                st.session_state[PLAY_KEY] = False
                st.rerun()                      # the end: redraw the controls (Play, the jump slider) once
            rr.jump(cur + 1)
            cur += 1
        where = "no steps" if not n else f"showing step {cur} (steps 0–{n - 1})"
        state = f"playing at {speed:g} steps/s" if playing else "replay"
        st.markdown(f"**{state}** · {where}")
        set_url(source, name, cur if n else None)
        t0 = time.perf_counter()
        renderers.render(rr, "replay")
        dt = time.perf_counter() - t0
        st.session_state[TIMING_KEY] = dt
        if playing and dt * speed > 0.8:
            st.caption(f"Each step takes {dt * 1000:.0f} ms to draw here, so playback runs at about "
                       f"{1 / max(dt, 1e-3):.1f} steps/s at most.")

    _view()
    in_full_run[0] = False


def downloads(r) -> None:
    """The trace (to share an uploaded one) and the shown step's figures as one HTML file, built on click."""
    if not r.trace.steps:
        return
    m = r.trace.meta
    base = f"{m.get('method', 'trace')}_{len(r.trace.steps)}steps"
    a, b, _ = st.columns([1, 1, 3])
    tree = st.session_state.get(TREE_KEY)
    whole = tree if getattr(tree, "branches", None) else r.trace      # a trace with branches: all of it
    a.download_button("Download trace JSON", whole.to_json, file_name=f"trace_{base}.json",
                      mime="application/json", key=f"{KEY}_dl")
    b.download_button("Download figures (HTML)", lambda: export.trace_html(r.trace, r.cursor),
                      file_name=f"figures_{base}.html", mime="text/html", key=f"{KEY}_dl_html",
                      help="the shown step's figures as one interactive HTML file (plotly.js included, opens "
                           "offline); built when clicked")


def main() -> None:
    common.app_navigation()
    st.set_page_config(page_title="Replay · decoding lab", layout="wide")
    st.title("Replay")
    st.caption("Scrub through or play a saved trace with the live views' figures. No model is loaded. "
               "Share a link to a step: `?trace=<example>&step=<n>` opens an example trace at that step.")
    examples = sorted(p.stem for p in EXAMPLES.glob("*.json"))
    source = choose_source(examples)
    loaded, label, name = load(source, examples)
    if loaded is not None:
        st.session_state[TREE_KEY] = loaded
        b, warning = start_branch(st.session_state.get(LINK_BRANCH_KEY), len(loaded.branches))
        st.session_state[LINK_BRANCH_KEY] = None
        if warning:
            st.warning(warning)
        st.session_state[BRANCH_KEY] = b
        shown = branches.saved_runs(loaded)[b]
        step, warning = start_step(st.session_state.get(LINK_STEP_KEY), len(shown.steps))
        st.session_state[LINK_STEP_KEY] = None     # the link's step applies once
        if warning:
            st.warning(warning)
        st.session_state[KEY] = TraceView(shown, cursor=step)
        st.session_state["replay_label"] = label
        st.session_state[PLAY_KEY] = False

    r = controls.runner(KEY)
    if r is None or label is None or st.session_state.get("replay_label") != label:
        set_url(source, name if source == "example" else None, None)
        return
    m = r.trace.meta
    st.markdown(f"**{md_text(m.get('method'))}** on {md_text(m.get('model'))} · {len(r.trace.steps)} steps · "
                f"prompt: _{md_text(m.get('prompt', ''), 200)}_")
    if source == "upload":
        st.caption("An uploaded trace stays in this browser session: the address bar (`?source=upload&step=...`) "
                   "asks whoever opens it to upload the same file. To share it, send the trace JSON (below).")
    tree = st.session_state.get(TREE_KEY)
    if tree is not None and tree.branches:
        r = branch_selector(tree)
    if not r.trace.steps:
        st.info("This trace has no steps to show.")
    step_controls(r)
    view(r, source, name)
    downloads(r)
    with st.expander("Final output"):
        st.text(r.trace.final_text)


main()
