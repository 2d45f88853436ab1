"""The shared step-through component: start a run, live re-render, pause / step / jump / cancel.

Decoding runs in the decoder process (engine.remote), one run per browser session and page, so widget
interactions (which rerun the script) never kill it and rendering never slows it. A fragment re-renders
on a timer while the run is live and stops polling once it is paused or finished. The timer adapts to
the measured render time (a refresh costs at most ~1/RENDER_SHARE of the time between refreshes), and
"render every N steps" (sidebar) lets a slow machine redraw less often.
"""
from __future__ import annotations

import math
import os
import time
from typing import Callable

import streamlit as st

from engine import remote
from engine.errors import LabError
from engine.runner import DONE, ERROR, EVENTS, PAUSED, RUNNING, Breakpoint, Runner
from ui import common, renderers
from viz.safe import md_text

# While a run is live: the status, progress and token stream refresh every REFRESH_S (cheap for the browser);
# the figures every FIGURES_S or longer, up to MAX_REFRESH_S, at least RENDER_SHARE times their measured
# server render time. Measured in headless chromium on this 2-core machine: redrawing the AR view's two
# plotly charts costs the browser ~0.25 s of CPU, i.e. a quarter of a core at one redraw per second, CPU the
# decoder needs; the token stream and metrics cost it ~5%.
REFRESH_S = float(os.environ.get("DECODING_LAB_REFRESH_S", 1.0))
FIGURES_S = float(os.environ.get("DECODING_LAB_FIGURES_S", 15.0))
FIGURES_KEY = "lab_live_figures_s"
FIRST_STEP_WAIT_S = 1.5  # a started run's first step is usually ready by then (the prompt's prefill)
MAX_REFRESH_S = 30.0
RENDER_SHARE = 25
LIVE_STREAM_TOKENS = 120  # the live status's token stream: the newest tokens (all of them in the figures view)
EVERY_N_KEY = "lab_render_every_n"


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
    st.session_state.pop(f"{key}__timing", None)
    if not start_paused and hasattr(r, "wait_steps"):
        r.wait_steps(1, timeout=FIRST_STEP_WAIT_S)   # so this very page run draws the first step's figures
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


class _Shown:
    """A run seen at another cursor (render every N steps) and/or drawn live (the live status already shows
    its token stream): the renderers read .trace, .cursor and .live."""

    def __init__(self, r, cursor: int | None, live: bool = False):
        self._r, self.cursor, self.live = r, cursor, live

    def __getattr__(self, name):
        return getattr(self._r, name)


def render_every_n() -> int:
    return max(1, int(st.session_state.get(EVERY_N_KEY, 1) or 1))


def live_figures_s() -> float:
    return float(st.session_state.get(FIGURES_KEY, FIGURES_S) or FIGURES_S)


def render_every_n_widget() -> None:
    with st.sidebar.expander("Live view", expanded=False):
        st.number_input("redraw the figures every (seconds)", 1.0, 120.0, step=1.0, key=FIGURES_KEY,
                        help="While a run is live, the status, progress and token stream update every second; "
                             "the figures every this many seconds (longer when a redraw is slow: at least 25x its "
                             "render time). A browser on the same machine spends CPU on every redraw (measured "
                             "here: ~1 s of CPU per redraw of a full view), CPU the decoder loses: shorter is "
                             "livelier, longer keeps the decoder's speed. Pause to inspect any step in full.",
                        **({} if FIGURES_KEY in st.session_state else {"value": FIGURES_S}))
        st.number_input("render every N steps", 1, 1000, step=1, key=EVERY_N_KEY,
                        help="While a run is live, draw only every N-th step (for demos on slow machines).",
                        **({} if EVERY_N_KEY in st.session_state else {"value": 1}))


def planned_steps(meta: dict) -> int | None:
    """Steps a run is expected to take when that is known up front (diffusion: its step budget)."""
    params = meta.get("params", {}) if isinstance(meta, dict) else {}
    if meta.get("family") == "diffusion" or meta.get("method") == "diffusion":
        return int(params.get("steps") or params.get("gen_length") or params.get("max_new_tokens") or 0) or None
    return None


def progress(r) -> None:
    """Steps and tokens done of the expected, compute tokens/s and the time left, while a run is live."""
    t = r.trace
    n = len(t.steps)
    max_new = int(t.meta.get("params", {}).get("max_new_tokens") or 0)
    tokens = t.counters.generated_tokens
    frac = tokens / max_new if max_new else 0.0
    planned = planned_steps(t.meta)
    if planned:
        frac = max(frac, n / planned)
    frac = min(1.0, frac)
    parts = [f"step {n}" + (f" of about {planned}" if planned else ""), f"{tokens} / {max_new} tokens"]
    if t.counters.compute_s > 0 and tokens:
        parts.append(f"{tokens / t.counters.compute_s:.1f} tokens/s (compute)")
    started = getattr(r, "started_at", None)
    if started and 0 < frac < 1 and r.state == RUNNING:
        left = (time.time() - started) * (1 - frac) / frac
        parts.append(f"about {left:.0f} s left" if left < 120 else f"about {left / 60:.0f} min left")
    prompt_len = len(t.meta.get("prompt_ids") or [])
    if prompt_len:
        parts.append(f"prompt {prompt_len} tokens")
    st.progress(frac, text=" · ".join(parts))


def live(key: str, render: Callable[[Runner], None]) -> None:
    """Render the runner's trace at its cursor. While the run is live two fragments refresh on their own
    timers: a light one (status, progress, the token stream) every REFRESH_S, and the figures every
    FIGURES_S or longer (see REFRESH_S above)."""
    r = runner(key)
    if r is None:
        return
    active = r.state == RUNNING
    base = live_figures_s()
    timing = st.session_state.setdefault(f"{key}__timing", {"render_s": 0.0, "interval": base, "base": base})
    if timing.get("base") != base:   # the sidebar setting changed
        timing.update(interval=base, base=base)
    interval = timing["interval"] if active else None
    status_every = REFRESH_S if active else None

    @st.fragment(run_every=status_every)
    def _status():
        rr = runner(key)
        if rr is None:
            return
        with common.guard("live status"):
            st.markdown(status_line(rr))
            if not rr.finished:
                progress(rr)
            if rr.state == RUNNING and rr.trace.steps:
                html = renderers.stream_html(_Shown(rr, len(rr.trace.steps) - 1), LIVE_STREAM_TOKENS)
                if html:
                    st.markdown(html, unsafe_allow_html=True)   # viz builders escape every trace string
            if rr.state == ERROR:
                show_error(rr)
            if not rr.trace.steps and rr.state == RUNNING:
                st.info("Prefilling the prompt...")
        if active and rr.state != RUNNING:
            st.rerun()  # the run paused or ended: redraw the whole page once, then stop polling
        if active and not in_full_run[0] and rr.trace.steps and not timing.get("drawn"):
            st.rerun()  # a long prefill: the figures were drawn with no step yet; draw them now, once

    @st.fragment(run_every=interval)
    def _figures():
        rr = runner(key)
        if rr is None or not rr.trace.steps:
            return
        t0 = time.perf_counter()
        with common.guard("live view"):
            render(_shown(rr, live=rr.state == RUNNING))
        timing["drawn"] = True
        dt = time.perf_counter() - t0
        timing["render_s"] = dt if not timing["render_s"] else 0.7 * timing["render_s"] + 0.3 * dt
        if active:
            st.caption(f"live view: redrawn in {dt * 1000:.0f} ms, every {interval:.1f} s"
                       + (f", every {render_every_n()} steps" if render_every_n() > 1 else ""))
            want = min(max(MAX_REFRESH_S, base), max(base, RENDER_SHARE * timing["render_s"]))
            if rr.state == RUNNING and abs(math.log(want / interval)) > math.log(2):
                timing["interval"] = round(want, 2)   # a full rerun re-registers the timer
                st.rerun()

    in_full_run = [True]   # the fragments below read it when their timers rerun them alone (then False)
    _status()
    _figures()
    in_full_run[0] = False


def _shown(r, live: bool = False):
    """The run at the step to draw: its cursor, or while following a live run, the newest multiple of N."""
    n_every = render_every_n()
    if n_every > 1 and r.state == RUNNING and r.following and r.trace.steps:
        return _Shown(r, (len(r.trace.steps) - 1) // n_every * n_every, live)
    return _Shown(r, r.cursor, live) if live else r


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
