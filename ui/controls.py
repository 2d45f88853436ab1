"""The shared step-through component: start a run, live re-render, pause / step / jump / cancel.

(~370 lines, one file on purpose: the step-through component's start, controls, status and metrics share
one session-state layout per run key.)

Decoding runs in the decoder process (engine.remote), one run per browser session and page, so widget
interactions (which rerun the script) never kill it and rendering never slows it. A fragment re-renders
on a timer while the run is live and stops polling once it is paused or finished. The timer adapts to
the measured render time (a refresh costs at most ~1/RENDER_SHARE of the time between refreshes), and
"render every N steps" (sidebar) lets a slow machine redraw less often.

What a person sees is the run's state after their click: the step controls act in button callbacks (before
the page is drawn) and wait briefly for the run to follow (Pause: the step in progress comes back); a run
still computing after that is shown as such and polled. Breakpoints changed while a run is live apply to it
from its next step. A run started from a page is watched (engine.remote's heartbeat): once the page's browser
session is gone (a closed tab), the decoder cancels it within seconds.
"""
from __future__ import annotations


import streamlit as st

from engine import remote
from engine.errors import LabError
from engine.runner import CANCELLED, DONE, EVENTS, PAUSED, RUNNING, Breakpoint, Runner
from ui import common
from viz.safe import md_text

FIRST_STEP_WAIT_S = 1.5  # a started run's first step is usually ready by then (the prompt's prefill)
# A click acts on the run before the page is drawn (a button callback), then waits this long at most for the
# run's state to follow, so the buttons and the status drawn after it are the run's new state. Longer steps
# (a long prompt's prefill) show "being computed" and the status polls until the step is back.
PAUSE_WAIT_S = 3.0    # Pause / Cancel: the step in progress comes back (an AR step takes ~0.1 s here)
STEP_WAIT_S = 20.0    # Step: the one step is computed
BP_OF = "lab_breakpoints_of"   # runner key -> (breakpoint widgets' prefix, events): callbacks read the widgets
EVENT_HELP = {
    "remasked": "Fires when a token committed at an earlier step is masked again. The shipped rules never take "
                "back a committed token (they leave a step's low-confidence predictions masked, which is not "
                "a remask), so with them this never fires.",
}


def _breakpoints_from_state(prefix: str, events: tuple[str, ...]) -> list[Breakpoint]:
    """The breakpoints the sidebar widgets under `prefix` describe (read from the session state, so a button
    callback sees what a person typed just before clicking)."""
    ss = st.session_state
    bps = []
    text = ss.get(f"{prefix}_bp_text") or ""
    if text:
        bps.append(Breakpoint("token", text))
    conf = float(ss.get(f"{prefix}_bp_conf") or 0.0)
    if conf > 0:
        bps.append(Breakpoint("confidence_below", conf))
    for ev in events:
        if ss.get(f"{prefix}_bp_{ev}"):
            bps.append(Breakpoint("event", ev))
    return bps


def _apply_breakpoints(key: str) -> bool:
    """Give the run under `key` the breakpoints its page's widgets show now; True if it is live (they apply)."""
    r = runner(key)
    spec = st.session_state.get(BP_OF, {}).get(key)
    if r is None or spec is None or r.finished:
        return False
    bps = _breakpoints_from_state(*spec)
    if list(r.breakpoints) != bps:
        r.set_breakpoints(bps)
    return True


def breakpoint_controls(prefix: str, events: tuple[str, ...] = (), container=None, keys=()) -> list[Breakpoint]:
    """The breakpoint widgets; their breakpoints are returned (for the next run) and given at once to the live
    runs under `keys` (a key or a tuple of keys), which apply them from their next step."""
    keys = (keys,) if isinstance(keys, str) else tuple(keys)
    c = container or st.sidebar
    with c.expander("Breakpoints", expanded=False):
        st.text_input("pause when this text appears", "", key=f"{prefix}_bp_text")
        st.number_input("pause when confidence is below (0 = off)", 0.0, 1.0, 0.0, 0.05, key=f"{prefix}_bp_conf")
        for ev in events:
            st.checkbox(f"pause when {EVENTS.get(ev, ev)}", key=f"{prefix}_bp_{ev}", help=EVENT_HELP.get(ev))
        bps = _breakpoints_from_state(prefix, events)
        st.session_state.setdefault(BP_OF, {}).update({k: (prefix, tuple(events)) for k in keys})
        live = [k for k in keys if _apply_breakpoints(k)]
        st.caption("Changes apply to the run in progress from its next step." if live else
                   "They apply to the next run, and to a run in progress from its next step.")
    return bps


def _arm_heartbeat(r) -> None:
    """A run started from a browser page is cancelled by the decoder soon after its page is gone (a closed tab):
    while the page's session is connected, engine.remote sends the run's heartbeat. Only under `streamlit run`
    (never in AppTest, scripts, the CLI or the engine API, whose runs are never cancelled this way)."""
    if not hasattr(r, "watch"):
        return
    connected = common.session_connected()
    if connected is not None:
        r.watch(connected)


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
    try:
        _arm_heartbeat(r)
    except LabError:   # the decoder went away just now: the run reports it
        pass
    if not start_paused and hasattr(r, "wait_steps"):
        r.wait_steps(1, timeout=FIRST_STEP_WAIT_S)   # so this very page run shows the first step's status
        st.session_state[f"{key}__fresh"] = True     # ... but not its figures: see live()
    return r


def runner(key: str) -> Runner | None:
    r = st.session_state.get(key)
    return r if isinstance(r, Runner) else None


def _act(key: str, action: str) -> None:
    """A step control's callback: it runs before the page is drawn, so what is drawn after it is the run's
    new state (a click handled inside the page run drew the buttons from the state before it)."""
    r = runner(key)
    if r is None:
        return
    with common.guard("step controls"):
        if action in ("resume", "fwd"):
            _apply_breakpoints(key)   # what the widgets say now, even if typed just before this click
        if action == "back":
            r.step_back()
        elif action == "fwd":
            computes = r.cursor is None or r.cursor >= len(r.trace.steps) - 1
            r.step_forward()
            if computes and not r.finished:
                r.wait_idle(timeout=STEP_WAIT_S)
        elif action == "pause":
            r.pause()
            r.wait_idle(timeout=PAUSE_WAIT_S)   # the step in progress comes back and is shown
        elif action in ("resume", "last"):
            r.resume()
        elif action == "cancel":
            r.cancel()
            r.wait_idle(timeout=PAUSE_WAIT_S)


def _jump(key: str, widget: str) -> None:
    r = runner(key)
    if r is not None and widget in st.session_state:
        r.jump(int(st.session_state[widget]))


def live_now(r) -> bool:
    """The run computes (running, or paused / cancelled with a step still being computed): the page polls."""
    return r.state == RUNNING or bool(getattr(r, "working", False))


def _owns_shortcuts(key: str) -> bool:
    """The first runner whose step controls a page run draws gets the keyboard shortcuts (J / K / L), so that two
    runners on one page (KV's full-cache run, diffusion side by side) never bind the same keys."""
    try:
        from streamlit.runtime.scriptrunner import get_script_run_ctx
        ctx = get_script_run_ctx()
    except Exception:   # noqa: BLE001 - no script context (bare mode): no shortcuts needed
        return False
    if ctx is None:
        return False
    marker = id(ctx.cursors)           # a new dict for every script run
    owner = st.session_state.get("_shortcut_owner")
    if owner is None or owner[0] != marker:
        st.session_state["_shortcut_owner"] = (marker, key)
        return True
    return owner[1] == key


COMPACT = {"◀ Back": "◀", "Step ▶": "▶", "Pause": "⏸", "Last step ▶▶": "▶▶", "Resume": "⏵", "Cancel": "✕"}   # session id -> (script run marker, runner key)


def step_controls(key: str, container=None, compact: bool = False) -> None:
    """Pause / resume / step back / step forward / jump / cancel for the runner under `key`, drawn from the
    run's state after the click (the buttons act in callbacks, before the page run). The page's first runner
    also answers the keys J (back), K (pause / resume / last step) and L (step), as Replay does."""
    r = runner(key)
    if r is None:
        return
    keys = not compact and _owns_shortcuts(key)     # compact halves: no room for the key hints
    sc = (lambda k: {"shortcut": k}) if keys else (lambda k: {})
    tip = (lambda k: f" (key {k})") if keys else (lambda k: "")
    c = container or st
    cols = c.columns([1, 1, 1, 1, 0.01, 3] if compact else [1, 1, 1.2, 1, 1, 4])
    label = COMPACT if compact else {k: k for k in COMPACT}   # compact: symbols, for a half-width column
    cols[0].button(label["◀ Back"], key=f"{key}_back", help="show the previous step (pauses)" + tip("J"),
                   disabled=r.cursor in (None, 0), on_click=_act, args=(key, "back"), **sc("J"))
    at_newest = r.cursor is None or r.cursor >= len(r.trace.steps) - 1
    cols[1].button(label["Step ▶"], key=f"{key}_fwd", on_click=_act, args=(key, "fwd"),
                   disabled=r.finished and at_newest,
                   help="next recorded step, or compute exactly one more (pauses)" + tip("L"), **sc("L"))
    if r.state == RUNNING:
        cols[2].button(label["Pause"], key=f"{key}_pause", on_click=_act, args=(key, "pause"),
                       help="pause after the step in progress" + tip("K"), **sc("K"))
    elif r.finished:
        cols[2].button(label["Last step ▶▶"], key=f"{key}_resume", on_click=_act, args=(key, "last"), disabled=r.following,
                       help="show the run's last step" + tip("K"), **sc("K"))
    else:
        cols[2].button(label["Resume"], key=f"{key}_resume", on_click=_act, args=(key, "resume"), type="primary",
                       help="continue decoding (from the newest step)" + tip("K"), **sc("K"))
    cols[3].button(label["Cancel"], key=f"{key}_cancel", disabled=r.finished, on_click=_act, args=(key, "cancel"),
                   help="stop the run for good (its steps stay to inspect and download)")
    n = len(r.trace.steps)
    if n > 1 and r.state != RUNNING:
        cur = r.cursor or 0
        widget = f"{key}_jump_{n}_{cur}"
        cols[5].slider("jump to step", 0, n - 1, cur, key=widget, label_visibility="collapsed",
                       on_change=_jump, args=(key, widget))


def status_line(r: Runner) -> str:
    n = len(r.trace.steps)
    cur = r.cursor
    where = "no steps yet" if cur is None else f"showing step {cur} (steps 0–{n - 1})"
    s = f"**{r.state}** · {where}"
    working = bool(getattr(r, "working", False))
    if r.state == PAUSED and working:
        s += f" · computing step {n}, then pausing"
    elif r.state == CANCELLED and working:
        s += " · the step in progress finishes, then the run stops"
    if r.break_reason and r.state == PAUSED:
        s += f" · breakpoint: {md_text(r.break_reason, 200)}"   # it quotes the breakpoint's text
    if r.state == CANCELLED and getattr(r, "stop_reason", None):
        s += f" · {md_text(r.stop_reason, 300)}"
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
    a, b, _ = st.columns([1, 1, 3])
    a.download_button("Download trace JSON", r.trace.to_json(), file_name=name, mime="application/json",
                      key=f"{key}_dl")
    from viz import export   # the figures of the step shown, one offline HTML file, built only on click
    trace, cursor = r.trace, r.cursor
    b.download_button("Download figures (HTML)", lambda: export.trace_html(trace, cursor),
                      file_name=name.replace(".json", f"_step{cursor or 0}.html"), mime="text/html",
                      key=f"{key}_dl_fig")


def scope_caption(r, cur: int, n: int, per_step: bool = True) -> str:
    """Which step the metrics row counts up to: the newest one of a live run, the end, or the step shown."""
    if n == 0:
        return ""
    if getattr(r, "live", False) and r.state == RUNNING:   # the figures of a live run, redrawn every few s
        s = f"So far: up to step {cur}, the newest when this was drawn (the run goes on; the status above is current)"
    elif cur >= n - 1 and not r.finished:
        s = f"So far: up to step {cur}, the newest (the run is {r.state})"
    elif cur >= n - 1:
        s = f"The whole run: {n} step{'s' if n != 1 else ''} ({r.state})"
    else:
        s = f"At step {cur} (of steps 0–{n - 1}): counted up to and including it"
        if not per_step:
            s += "; tokens, forwards and compute are the whole run's (this trace records no per-step totals)"
    return s


def metrics_row(r: Runner, extra: dict | None = None, tokens: int | None = None, tokens_help: str | None = None,
                rerun: tuple[str, ...] = ()) -> None:
    """The run's counts at the step shown (every step records the run's totals up to it), then the view's own
    figures at that step, under a caption that says which step. `tokens`: the count to show while the run's
    own is still 0 (diffusion: the positions committed so far); `rerun`: keys of `extra` measured on a
    separate full run (speedup vs AR). A value may be (value, help)."""
    t = r.trace
    n = len(t.steps)
    cur = r.cursor if r.cursor is not None else n - 1
    tot = t.steps[cur].get("totals") if 0 <= cur < n else None
    c = t.counters
    per_step = isinstance(tot, dict) and "tokens" in tot
    if per_step:
        ntok, fwd, comp = int(tot.get("tokens") or 0), int(tot.get("target_forwards") or 0), float(tot.get("compute_s") or 0)
    else:
        ntok, fwd, comp = c.generated_tokens, c.target_forwards, c.compute_s
    if tokens is not None and not ntok:
        ntok = int(tokens)
    items = {
        "tokens": (ntok, tokens_help),
        "target forwards": fwd,
        "tokens / forward": f"{ntok / fwd:.2f}" if fwd and ntok else "-",
        "compute s": f"{comp:.2f}" if comp >= 0.01 or not comp else f"{comp:.3g}",
        "tokens/s (compute)": rate(ntok / comp) if comp > 0 and ntok else "-",
    }
    items.update(extra or {})
    caption = scope_caption(r, cur, n, per_step)
    shown_rerun = [k for k in rerun if k in items]
    if shown_rerun:
        caption += f"; {', '.join(shown_rerun)}: measured on a separate run of the whole prompt"
    if caption:
        st.caption(caption)
    pairs = list(items.items())
    per_row = 5 if len(pairs) > 6 else max(1, len(pairs))   # more than 6 a row cut their labels ("tokens/s (com...")
    for i in range(0, len(pairs), per_row):
        cols = st.columns(per_row)
        for col, (k, v) in zip(cols, pairs[i:i + per_row]):
            v, help_ = v if isinstance(v, tuple) else (v, None)
            col.metric(k, v, help=help_)


# the live view lives in ui/live.py; pages and tests keep calling controls.live, controls.progress, ...
from ui.live import (  # noqa: E402,F401
    EVERY_N_KEY, FIGURES_KEY, FIGURES_S, LIVE_STREAM_TOKENS, REFRESH_S, _Shown, _shown, committed_at, live,
    live_figures_s, planned_steps, prefill_message, progress, rate, render_every_n, render_every_n_widget,
    tokens_so_far)

__all__ = ["start", "runner", "step_controls", "live", "download_button", "breakpoint_controls", "metrics_row",
           "DONE", "RUNNING", "PAUSED"]
