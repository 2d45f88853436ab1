"""The shared step-through component: start a run, live re-render, pause / step / jump / cancel.

Decoding runs in a worker thread (engine.runner.Runner) per browser session and page, so widget
interactions (which rerun the script) never kill it; a fragment re-renders on a short timer while
the worker runs, and stops polling once it is paused or finished.
"""
from __future__ import annotations

from typing import Callable

import streamlit as st

from engine import remote
from engine.errors import LabError
from engine.runner import DONE, ERROR, EVENTS, PAUSED, RUNNING, Breakpoint, Runner
from ui import common
from viz.safe import md_text

REFRESH_S = 0.5


def breakpoint_controls(prefix: str, events: tuple[str, ...] = (), container=None) -> list[Breakpoint]:
    c = container or st.sidebar
    with c.expander("Breakpoints", expanded=False):
        bps = []
        text = st.text_input("pause when this text appears", "", key=f"{prefix}_bp_text")
        if text:
            bps.append(Breakpoint("token", text))
        conf = st.number_input("pause when confidence is below (0 = off)", 0.0, 1.0, 0.0, 0.05,
                               key=f"{prefix}_bp_conf")
        if conf > 0:
            bps.append(Breakpoint("confidence_below", float(conf)))
        for ev in events:
            if st.checkbox(f"pause when {EVENTS.get(ev, ev)}", key=f"{prefix}_bp_{ev}"):
                bps.append(Breakpoint("event", ev))
    return bps


def start(key: str, lm, method: str, prompt: str, *, breakpoints=(), start_paused=False, **kw) -> Runner | None:
    """Validate and start a run in the decoder process; a bad input shows an error and returns None."""
    old = st.session_state.get(key)
    if isinstance(old, Runner):
        old.cancel()
    try:
        r = remote.decoder().start(lm, method, prompt, breakpoints=breakpoints, start_paused=start_paused, **kw)
    except LabError as e:  # PromptError, MethodError, OptionError, SamplingError, DecoderError: clear messages
        st.session_state.pop(key, None)
        st.error(md_text(e, 1000))
        return None
    except Exception as e:  # a bug: an id for the log, never a traceback
        st.session_state.pop(key, None)
        common.report_internal_error(e, f"start of the {method} run")
        return None
    st.session_state[key] = r
    return r


def runner(key: str) -> Runner | None:
    r = st.session_state.get(key)
    return r if isinstance(r, Runner) else None


def step_controls(key: str, container=None) -> None:
    """Pause / resume / step back / step forward / jump / cancel for the runner under `key`."""
    r = runner(key)
    if r is None:
        return
    c = container or st
    cols = c.columns([1, 1, 1, 1, 1, 4])
    running = r.state == RUNNING
    if cols[0].button("◀ Back", key=f"{key}_back", help="show the previous step (pauses)", disabled=r.cursor in (None, 0)):
        r.step_back()
    if cols[1].button("Step ▶", key=f"{key}_fwd", help="next recorded step, or compute exactly one more"):
        r.step_forward()
        r.wait_idle(timeout=120)
    if running:
        if cols[2].button("Pause", key=f"{key}_pause"):
            r.pause()
    elif cols[2].button("Resume", key=f"{key}_resume", disabled=r.finished and r.following):
        r.resume()
    if cols[3].button("Cancel", key=f"{key}_cancel", disabled=r.finished):
        r.cancel()
    n = len(r.trace.steps)
    if n > 1 and r.state != RUNNING:
        cur = r.cursor or 0
        new = cols[5].slider("jump to step", 0, n - 1, cur, key=f"{key}_jump_{n}_{cur}", label_visibility="collapsed")
        if new != cur:
            r.jump(new)
            st.rerun()


def status_line(r: Runner) -> str:
    n = len(r.trace.steps)
    cur = r.cursor
    where = "no steps yet" if cur is None else f"showing step {cur} (steps 0–{n - 1})"
    s = f"**{r.state}** · {where}"
    if r.break_reason and r.state == PAUSED:
        s += f" · breakpoint: {md_text(r.break_reason, 200)}"   # it quotes the breakpoint's text
    return s


def show_error(r) -> None:
    """The error a run stopped with: our own errors by their message, a bug by an id (traceback in the log)."""
    exc = getattr(r, "exception", None)
    if exc is not None and not isinstance(exc, LabError):
        if not getattr(r, "_reported", None):
            r._reported = common.report_internal_error(exc, "decoding run")
        else:
            st.error(f"The run stopped with an internal error (error id {r._reported}); the details are in the "
                     "server log.")
        return
    st.error(f"The run stopped: {md_text(r.error, 500)}")


def live(key: str, render: Callable[[Runner], None]) -> None:
    """Render the runner's trace at its cursor; re-render on a timer while the worker runs."""
    r = runner(key)
    if r is None:
        return
    active = r.state == RUNNING

    @st.fragment(run_every=REFRESH_S if active else None)
    def _view():
        rr = runner(key)
        if rr is None:
            return
        with common.guard("live view"):
            st.markdown(status_line(rr))
            if rr.state == ERROR:
                show_error(rr)
            if rr.trace.steps:
                render(rr)
            elif rr.state == RUNNING:
                st.info("Prefilling the prompt...")
        if active and rr.state != RUNNING:
            st.rerun()  # the worker paused or ended: redraw the whole page once, then stop polling

    _view()


def measure_vs_ar(lm, r) -> None:
    """engine.measure.vs_autoregressive for a finished run, done in the decoder process; kept in its extra."""
    with st.spinner("Decoding the prompt with this method and autoregressively, neither recording..."):
        try:
            r.trace.extra["vs_ar"] = remote.decoder().task(lm, "vs_autoregressive", meta=r.trace.meta,
                                                            final_ids=list(r.trace.final_ids))
        except LabError as e:
            st.error(md_text(e, 1000))


def vs_ar_table(r) -> None:
    """engine.measure.vs_autoregressive's result, when the page measured it: both runs, and for a lossless
    greedy run whether the output was identical."""
    cmp = r.trace.extra.get("vs_ar") if isinstance(r.trace.extra, dict) else None
    if not isinstance(cmp, dict) or not isinstance(cmp.get("rows"), list):
        return
    import pandas as pd
    st.markdown("**Against autoregressive on the same prompt** (both re-run without recording, same model, "
                "compute time only)")
    st.dataframe(pd.DataFrame(cmp["rows"]), hide_index=True, width="stretch")
    if cmp.get("identical") is not None:
        st.caption("greedy output identical to autoregressive: " + ("yes" if cmp["identical"] else "**no**"))


def download_button(key: str) -> None:
    r = runner(key)
    if r is None or r.state == RUNNING or not r.trace.steps:
        return
    name = f"trace_{r.trace.meta.get('method', 'run')}_{len(r.trace.steps)}steps.json"
    st.download_button("Download trace JSON", r.trace.to_json(), file_name=name, mime="application/json",
                       key=f"{key}_dl")


def metrics_row(r: Runner, extra: dict | None = None) -> None:
    c = r.trace.counters
    items = {
        "tokens": c.generated_tokens,
        "target forwards": c.target_forwards,
        "tokens / forward": f"{c.generated_tokens / c.target_forwards:.2f}" if c.target_forwards else "-",
        "compute s": f"{c.compute_s:.2f}",
        "tokens/s (compute)": f"{c.generated_tokens / c.compute_s:.1f}" if c.compute_s > 0 else "-",
    }
    items.update(extra or {})
    cols = st.columns(len(items))
    for col, (k, v) in zip(cols, items.items()):
        col.metric(k, v)


__all__ = ["start", "runner", "step_controls", "live", "download_button", "breakpoint_controls", "metrics_row",
           "DONE", "RUNNING", "PAUSED"]
