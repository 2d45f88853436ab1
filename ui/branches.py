"""What-if forks on a live page: branch the page's run at a step with one edit (another token, method, options or
sampling), decode the branch in the decoder process (engine.remote.Decoder.fork) BESIDE the original, and compare.

(The "Fork here" form is ui/fork_form.py; how a branch is shown beside its parent (labels, output positions, the
half-page step controls, the metrics table, a saved trace's tree) is ui/branch_view.py, re-exported here; this
module keeps the branch store, the fork operation, the page section and the branched trace files.)

Every page with a run calls `section(KEY, lm, prefix)` below its view and `download_button(KEY)` instead of
controls.download_button. The branches of a run live in the session state under f"{KEY}__tree" (a new run of
the page drops them); branch n's runner under f"{KEY}_b{n}", so that the shared step controls drive it. The
AR view's candidate chart calls `request(KEY, step, token)` when a bar is clicked (ui.render_ar, pick=...).
"""
from __future__ import annotations

import streamlit as st

from engine import fork as engine_fork
from engine import remote
from engine import trace as T
from engine.errors import LabError
from engine.runner import RUNNING, Runner
from ui import common, controls
from ui.branch_view import (canvas_tokens, compact_controls, describe, divergence, fork_position,  # noqa: F401
                            held_key, label, metrics_table, offset, replay_tree, saved_label, saved_runs,
                            saved_tokens, shown_position, step_summary)
from viz import fork as vf
from viz.safe import md_text

MAX_BRANCHES = 8          # branches per run kept on a page (the decoder caps live ones per session, too)
REFRESH_S = 1.0


# ---- the tree of a page's run ----------------------------------------------------------------------------
def _tree(key: str) -> dict:
    """The page run's branches; dropped (and cancelled) when the page's run is another one than they forked."""
    r = controls.runner(key)
    t = st.session_state.get(f"{key}__tree")
    if t is None or t.get("root") is not r:
        if t is not None:
            for b in t["branches"]:
                br = st.session_state.pop(b["key"], None)
                if isinstance(br, Runner):
                    br.cancel()
        t = {"root": r, "branches": [], "next": 1}
        st.session_state[f"{key}__tree"] = t
    return t


def runs(key: str) -> list[tuple[int, Runner, dict | None]]:
    """(id, runner, branch entry) of the original (id 0, entry None) and each branch still held."""
    r = controls.runner(key)
    if r is None:
        return []
    out = [(0, r, None)]
    for b in _tree(key)["branches"]:
        br = controls.runner(b["key"])
        if br is not None:
            out.append((b["id"], br, b))
    return out


def _session():
    try:
        from streamlit.runtime.scriptrunner import get_script_run_ctx
        ctx = get_script_run_ctx()
        return ctx.session_id if ctx is not None else None
    except Exception:  # noqa: BLE001 -- no session: no per-session cap
        return None


def start_fork(key: str, lm, parent_id: int, step: int, **edit) -> int | None:
    """Fork run `parent_id` of the page at `step` with `edit`; the new branch's id, or None (the reason is kept
    and shown by section())."""
    st.session_state.pop(f"{key}__fork_error", None)
    held = {i: r for i, r, _ in runs(key)}
    parent = held.get(parent_id)
    t = _tree(key)
    try:
        if parent is None:
            raise engine_fork.ForkError(f"There is no run {parent_id} to fork.")
        if len(t["branches"]) >= MAX_BRANCHES:
            raise engine_fork.ForkError(f"This run has {MAX_BRANCHES} branches already (the most a page keeps): "
                                        "remove some (Remove all branches) to fork again.")
        if lm is None:
            raise engine_fork.ForkError("No model is loaded: load one on the home page to fork.")
        b = remote.decoder().fork(lm, parent.trace, step, parent_id=parent_id, session=_session(),
                                  parent_run=getattr(parent, "run_id", None), **edit)
    except LabError as e:
        st.session_state[f"{key}__fork_error"] = str(e)
        return None
    n = t["next"]
    t["next"] += 1
    entry = {"id": n, "key": f"{key}_b{n}", "parent": parent_id, "step": step}
    st.session_state[entry["key"]] = b
    t["branches"].append(entry)
    st.session_state[f"{key}__side"] = n
    controls._arm_heartbeat(b)
    b.wait_steps(1, timeout=controls.FIRST_STEP_WAIT_S)
    return n


def request(key: str, step: int, token: int) -> None:
    """A candidate bar was clicked (a chart callback, before the page runs): fork the original there."""
    st.session_state[f"{key}__pending"] = (int(step), int(token))


def remove_all(key: str) -> None:
    t = _tree(key)
    for b in t["branches"]:
        br = st.session_state.pop(b["key"], None)
        if isinstance(br, Runner):
            br.cancel()
    t["branches"] = []
    st.session_state.pop(f"{key}__side", None)


# ---- tokens by output position -----------------------------------------------------------------------------
def tokens_of(key: str) -> dict[int, list[vf.Tok]]:
    """Each held run's whole answer by output position (inherited tokens take their parent's texts)."""
    out: dict[int, list[vf.Tok]] = {}
    for i, r, entry in runs(key):
        if r.trace.meta.get("method") == "diffusion" and r.trace.steps:
            out[i] = canvas_tokens(r)
            continue
        own = vf.own_tokens(r.trace.steps, r.trace.final_ids, getattr(r, "token_texts", None))
        if entry is None:
            out[i] = own
        else:
            out[i] = vf.branch_tokens(out.get(entry["parent"], []), r.trace.meta.get("fork") or {}, own)
    return out


def tree_nodes(key: str) -> list[dict]:
    toks = tokens_of(key)
    nodes = []
    for i, r, entry in runs(key):
        nodes.append({"id": i, "parent": None if entry is None else entry["parent"], "at": fork_position(r.trace.meta),
                      "length": len(toks.get(i, [])), "state": r.state,
                      "label": label(i, entry) + ("" if entry is None else f" ({describe(r.trace.meta)})")})
    return nodes


# ---- the page section ------------------------------------------------------------------------------------
def _any_live(key: str) -> bool:
    return any(controls.live_now(r) for i, r, _ in runs(key) if i)


def section(key: str, lm, prefix: str, allow_token: bool = False) -> None:
    """Below a page's view: the fork controls, the tree of branches, the original and one branch side by side
    (aligned by output position, each with its step controls), and both runs' metrics."""
    r = controls.runner(key)
    if r is None or not r.trace.steps:
        return
    pending = st.session_state.pop(f"{key}__pending", None)
    if pending is not None:
        start_fork(key, lm, 0, pending[0], token=pending[1])
    st.subheader("What-if branches")
    from ui.fork_form import fork_controls   # here: ui.fork_form builds on this module
    fork_controls(key, lm, prefix, allow_token)
    err = st.session_state.get(f"{key}__fork_error")
    if err:
        st.error(f"Cannot fork: {md_text(err, 1000)}")
    held = runs(key)
    if len(held) < 2:
        st.caption(("Click a candidate bar in the chart above to fork the run at the step shown with that token, "
                    "or use " if allow_token else "Use ") + "the fork controls above: the branch decodes beside "
                   "the original.")
        return
    from viz.fork import tree_figure
    names = {i: label(i, e) for i, _, e in held}
    branch_ids = [i for i, _, _ in held if i]
    side = st.session_state.get(f"{key}__side")
    if side not in branch_ids:
        side = branch_ids[-1]
    st.session_state[f"{key}__side"] = side
    a, b = st.columns([3, 1])
    a.plotly_chart(tree_figure(tree_nodes(key), selected=side), key=f"{prefix}_fk_tree", width="stretch")
    sel = b.radio("beside the original", branch_ids, format_func=lambda i: names[i], key=f"{prefix}_fk_side_{side}",
                  index=branch_ids.index(side))
    if sel != side:
        st.session_state[f"{key}__side"] = side = sel
        st.rerun()
    b.button("Remove all branches", key=f"{prefix}_fk_clear", on_click=remove_all, args=(key,))
    entry = next(e for i, _, e in held if i == side)
    br = controls.runner(entry["key"])
    st.session_state[f"{key}__orig"] = r      # the original's step controls here, under their own keys
    parent_id = entry["parent"]

    @st.fragment(run_every=REFRESH_S if _any_live(key) else None)
    def _live():
        with common.guard("branches"):
            toks = tokens_of(key)
            parent_r = dict((i, rr) for i, rr, _ in runs(key)).get(parent_id, r)
            pa, bt = toks.get(parent_id, []), toks.get(side, [])
            div = divergence(pa, bt)
            st.caption(f"{md_text(names[side])}: {md_text(describe(br.trace.meta), 300)} (forked from "
                       f"{md_text(names.get(parent_id, 'parent'))})")
            st.markdown(vf.aligned_html([(names.get(parent_id, "parent"), pa, shown_position(parent_r)),
                                         (names[side], bt, shown_position(br))], fork_position(br.trace.meta), div),
                        unsafe_allow_html=True)
            c1, c2 = st.columns(2)
            c1.markdown(f"**{md_text(names.get(parent_id, 'parent'))}** · " + controls.status_line(parent_r))
            c2.markdown(f"**{md_text(names[side])}** · " + controls.status_line(br))
            if br.state == "error":
                with c2:
                    controls.show_error(br)
        if not _any_live(key) and live_flag[0] and not in_full[0]:
            st.rerun()

    live_flag = [_any_live(key)]
    in_full = [True]
    _live()
    in_full[0] = False
    c1, c2 = st.columns(2)
    for col, k in ((c1, f"{key}__orig" if parent_id == 0 else held_key(key, parent_id)), (c2, entry["key"])):
        with col:
            compact_controls(k)
            step_summary(controls.runner(k))
    metrics_table({i: (rr, e) for i, rr, e in runs(key)}, lm, [parent_id, side])


# ---- traces with branches ----------------------------------------------------------------------------------
def bundle(original: T.Trace, branches: list[tuple[int, int, T.Trace]]) -> T.Trace:
    """One trace holding the original and its branches (engine.trace schema 2): (id, parent id, trace) of each
    branch with steps, renumbered in order; a branch whose parent is left out is left out too. Nothing given is
    modified (the saved branches get copies of their meta)."""
    index = {0: 0}
    out = []
    for i, p, t in branches:
        if p not in index or not t.steps:
            continue
        meta = dict(t.meta)
        meta["fork"] = {**(t.meta.get("fork") or {}), "parent": index[p]}
        out.append(T.Trace(meta=meta, steps=t.steps, counters=t.counters, final_text=t.final_text,
                           final_ids=t.final_ids, extra=t.extra))
        index[i] = len(out)
    return T.Trace(meta=original.meta, steps=original.steps, counters=original.counters,
                   final_text=original.final_text, final_ids=original.final_ids, extra=original.extra, branches=out)


def download_button(key: str) -> None:
    """controls.download_button, or with branches the original and every branch not decoding in one JSON."""
    r = controls.runner(key)
    held = runs(key)[1:]
    if r is None or not held:
        controls.download_button(key)
        return
    if r.state == RUNNING or not r.trace.steps:
        return
    done = [(i, e["parent"], br.trace) for i, br, e in held if not controls.live_now(br)]
    name = f"trace_{r.trace.meta.get('method', 'run')}_{len(r.trace.steps)}steps_{len(done)}branches.json"
    a, b, _ = st.columns([1.4, 1, 2.6])
    a.download_button("Download trace JSON (with branches)", lambda: bundle(r.trace, done).to_json(), file_name=name,
                      mime="application/json", key=f"{key}_dl", help="the original run and its branches that are "
                      "not decoding, in one file (Replay shows the tree)")
    from viz import export
    trace, cursor = r.trace, r.cursor
    b.download_button("Download figures (HTML)", lambda: export.trace_html(trace, cursor),
                      file_name=name.replace(".json", f"_step{cursor or 0}.html"), mime="text/html",
                      key=f"{key}_dl_fig")
