"""The live view: while a run computes, a light fragment (status, progress, the newest tokens) refreshes every
REFRESH_S and the figures every FIGURES_S or longer; both stop when the run pauses or ends. Split from
ui/controls.py (the step controls, breakpoints, metrics), which re-exports these names."""
from __future__ import annotations

import html
import math
import os
import time
from typing import Callable

import streamlit as st

from engine.runner import ERROR, RUNNING, Runner
from ui import common, live_feed, renderers
from ui.controls import live_now, runner, show_error, status_line

# While a run is live: the status, progress and token stream refresh every REFRESH_S (cheap for the browser);
# the figures every FIGURES_S or longer, up to MAX_REFRESH_S, at least RENDER_SHARE times their measured
# server render time. Measured in headless chromium on this 2-core machine: redrawing the AR view's two
# plotly charts costs the browser ~0.25 s of CPU, i.e. a quarter of a core at one redraw per second, CPU the
# decoder needs; the token stream and metrics cost it ~5%.
REFRESH_S = float(os.environ.get("DECODING_LAB_REFRESH_S", 1.0))
FIGURES_S = float(os.environ.get("DECODING_LAB_FIGURES_S", 15.0))
FIGURES_KEY = "lab_live_figures_s"
MAX_REFRESH_S = 30.0
RENDER_SHARE = 25
LIVE_STREAM_TOKENS = 120  # the live status's token stream: the newest tokens (all of them in the figures view)
EVERY_N_KEY = "lab_render_every_n"
# While a run is live the page turns off CSS transitions and animations (the progress bar's, elements fading
# while a fragment reruns): in headless chromium on this 2-core machine they cost the browser ~0.05 cores of
# CPU at one status refresh per second, CPU the decoder loses.
LIVE_CSS = ("<style>*, *::before, *::after { transition: none !important; animation: none !important; }"
            "</style>")


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


def progress_state(r) -> tuple[float, str]:
    """Steps and tokens done of the expected, compute tokens/s and the time left: the fraction and its text."""
    t = r.trace
    n = len(t.steps)
    max_new = int(t.meta.get("params", {}).get("max_new_tokens") or 0)
    tokens = tokens_so_far(t)
    frac = tokens / max_new if max_new else 0.0
    planned = planned_steps(t.meta)
    if planned:
        frac = max(frac, n / planned)
    frac = min(1.0, frac)
    parts = [f"{n} of about {planned} steps" if planned else f"{n} step{'s' if n != 1 else ''}",
             f"{tokens} / {max_new} tokens"]
    if t.counters.compute_s > 0 and tokens:
        parts.append(f"{rate(tokens / t.counters.compute_s)} tokens/s (compute)")
    started = getattr(r, "started_at", None)
    if started and 0 < frac < 1 and r.state == RUNNING:
        left = (time.time() - started) * (1 - frac) / frac
        parts.append(f"about {left:.0f} s left" if left < 120 else f"about {left / 60:.0f} min left")
    prompt_len = len(t.meta.get("prompt_ids") or [])
    if prompt_len:
        parts.append(f"prompt {prompt_len:,} tokens" + (" (prefilling)" if not n and live_now(r) else ""))
    return frac, " · ".join(parts)


def progress(r) -> None:
    """The progress bar of a live run (progress_state)."""
    frac, text = progress_state(r)
    st.progress(frac, text=text)


def feed_doc(r) -> dict:
    """What the live feed (ui/live_feed.py) shows of a run: the same status, progress and newest tokens as the
    status fragment below, as escaped HTML and text."""
    frac, text = progress_state(r)
    stream = ""
    if r.trace.steps:
        stream = renderers.stream_html(_Shown(r, len(r.trace.steps) - 1), LIVE_STREAM_TOKENS) or ""
    elif live_now(r):
        stream = f"<div style='padding:6px 0'>{html.escape(prefill_message(r))}</div>"
    return {"status_html": live_feed.status_html(status_line(r)), "frac": frac, "progress_text": text,
            "stream_html": stream, "steps": len(r.trace.steps), "live": live_now(r)}


def rate(x: float | None) -> str:
    """A speed with enough digits to read: 123 · 12.3 · 1.23 · 0.0123 (never a slow run's "0.0")."""
    if x is None:
        return "-"
    if x >= 100:
        return f"{x:.0f}"
    if x >= 10:
        return f"{x:.1f}"
    if x >= 1:
        return f"{x:.2f}"
    return f"{x:.3g}" if x > 0 else "0"


def committed_at(step: dict) -> int:
    """A diffusion step's committed positions (its answer's tokens are counted only when the run ends)."""
    state = step.get("state") or []
    return len(state) - state.count("mask")


def tokens_so_far(t) -> int:
    """Tokens generated so far; for a diffusion run still going, the positions committed so far."""
    tokens = t.counters.generated_tokens
    if not tokens and t.steps and t.steps[-1].get("kind") == "diffusion":
        return committed_at(t.steps[-1])
    return tokens


def live(key: str, render: Callable[[Runner], None]) -> None:
    """Render the runner's trace at its cursor. While the run is live two fragments refresh on their own
    timers: a light one (status, progress, the token stream) every REFRESH_S, and the figures every
    FIGURES_S or longer (see REFRESH_S above)."""
    r = runner(key)
    if r is None:
        return
    active = live_now(r)
    base = live_figures_s()
    timing = st.session_state.setdefault(f"{key}__timing", {"render_s": 0.0, "interval": base, "base": base})
    if timing.get("base") != base:   # the sidebar setting changed
        timing.update(interval=base, base=base)
    interval = timing["interval"] if active else None
    status_every = REFRESH_S if active else None
    # The page run that starts a run draws its status and newest tokens, not its figures: mounting a view's
    # plotly charts costs a browser on the same machine ~1 s of CPU (measured in headless chromium, 2 cores),
    # right when the decoder starts (an AR run of 128 tokens: 20.7 tok/s watched with the figures drawn at
    # the start, 26.9 without, 31 unwatched). The figures follow on their timer, or when the run pauses / ends.
    fresh = bool(st.session_state.pop(f"{key}__fresh", False)) and r.state == RUNNING
    if active:
        st.html(LIVE_CSS)

    feed = active and r.state == RUNNING and live_feed.enabled()   # (a paused run's one step: the fragment)
    if feed:
        # the status, progress and newest tokens update in the browser from a JSON feed (ui/live_feed.py): no
        # Streamlit rerun per refresh. The component sends a value when the run stops being live: redraw.
        with common.guard("live status"):
            live_feed.show(f"{key}:{common.session_id()}", r, feed_doc, poll_ms=int(REFRESH_S * 1000),
                           connected=common.session_connected())
        status_every = None

    @st.fragment(run_every=status_every)
    def _status():
        rr = runner(key)
        if rr is None or feed:
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
            if not rr.trace.steps and live_now(rr):
                st.info(prefill_message(rr))
        if active and not live_now(rr):
            st.rerun()  # the run paused or ended: redraw the whole page once, then stop polling
        if active and not in_full_run[0] and rr.trace.steps and not timing.get("drawn"):
            st.rerun()  # a long prefill: the figures were drawn with no step yet; draw them now, once

    @st.fragment(run_every=interval)
    def _figures():
        rr = runner(key)
        if rr is None or not rr.trace.steps:
            return
        if fresh and in_full_run[0]:
            timing["drawn"] = True
            st.caption(f"The figures are drawn every {interval:.0f} s while the run is live (sidebar: Live view), "
                       "and in full when it pauses or ends; the status and the newest tokens above update every "
                       f"{REFRESH_S:g} s.")
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


def prefill_message(r) -> str:
    """What a run shows before its first step: the prompt's length in tokens, and for how long it has been at it."""
    n = len(r.trace.meta.get("prompt_ids") or [])
    s = f"Prefilling the prompt ({n:,} tokens)" if n else "Prefilling the prompt"
    started = getattr(r, "started_at", None)
    if started and time.time() - started >= 2:
        s += f" · {time.time() - started:.0f} s so far"
    if n >= 2000:
        s += " · a long prompt takes a while on a CPU"
    return s + "..."


def _shown(r, live: bool = False):
    """The run at the step to draw: its cursor, or while following a live run, the newest multiple of N."""
    n_every = render_every_n()
    if n_every > 1 and r.state == RUNNING and r.following and r.trace.steps:
        return _Shown(r, (len(r.trace.steps) - 1) // n_every * n_every, live)
    return _Shown(r, r.cursor, live) if live else r
