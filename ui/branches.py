"""What-if forks on a live page: branch the page's run at a step with one edit (another token, method, options or

(The "Fork here" form is ui/fork_form.py; this module keeps the branch store, the side-by-side view, the metrics
and the branched trace files.)
sampling), decode the branch in the decoder process (engine.remote.Decoder.fork) BESIDE the original, and compare.

Every page with a run calls `section(KEY, lm, prefix)` below its view and `download_button(KEY)` instead of
controls.download_button. The branches of a run live in the session state under f"{KEY}__tree" (a new run of
the page drops them); branch n's runner under f"{KEY}_b{n}", so that the shared step controls drive it. The
AR view's candidate chart calls `request(KEY, step, token)` when a bar is clicked (ui.render_ar, pick=...).
"""
from __future__ import annotations

import streamlit as st

from engine import fork as engine_fork
from engine import quality, remote
from engine import trace as T
from engine.errors import LabError
from engine.runner import RUNNING, Runner
from ui import common, controls
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


def label(i: int, entry: dict | None) -> str:
    return "original" if entry is None else f"branch {i}"


def _session():
    try:
        from streamlit.runtime.scriptrunner import get_script_run_ctx
        ctx = get_script_run_ctx()
        return ctx.session_id if ctx is not None else None
    except Exception:  # noqa: BLE001 -- no session: no per-session cap
        return None


def describe(meta: dict) -> str:
    """A branch's edit in a few words (its trace's meta["fork"])."""
    f = meta.get("fork") or {}
    e = f.get("edit") or {}
    parts = []
    if e.get("token"):
        parts.append(f"token {e['token'].get('text', '?')!r}")
    if e.get("force"):
        fo = e["force"]
        parts.append(f"node #{fo.get('node')} force-{'accepted' if fo.get('accept') else 'rejected'}")
    if e.get("guesses"):
        parts.append("guesses " + " ".join(repr(t) for t in (e["guesses"].get("text") or [])[:6]))
    if e.get("canvas"):
        c = e["canvas"]
        parts.append(f"position {c.get('position')} " + ("masked" if c.get("id") is None else f"← {c.get('text')!r}"))
    if e.get("method"):
        parts.append(f"→ {e['method']}")
    if e.get("options"):
        parts.append("options " + ", ".join(f"{k}={v}" for k, v in list(e["options"].items())[:4]))
    if e.get("sampling"):
        s = e["sampling"]
        parts.append("greedy" if not s.get("temperature") else f"T={s.get('temperature')} seed={s.get('seed')}")
    if f.get("cost_forwards"):
        parts.append(f"{f['cost_forwards']} replayed forwards")
    if f.get("not_lossless"):
        parts.append("not lossless")
    return f"at step {f.get('at_step')}: " + (", ".join(parts) if parts else "no edit")


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


def canvas_tokens(r) -> list[vf.Tok]:
    """A diffusion run's canvas after the step it shows (masked positions as [MASK], id -1); a branch's edited
    position marked."""
    steps = r.trace.steps
    rec = steps[r.cursor if r.cursor is not None else len(steps) - 1]
    edit = ((r.trace.meta.get("fork") or {}).get("edit") or {}).get("canvas") or {}
    out = []
    for p, (s, t, x) in enumerate(zip(rec.get("state") or [], rec.get("tokens") or [], rec.get("texts") or [])):
        origin = "edited" if p == edit.get("position") else "own"
        out.append(vf.Tok(-1, "[MASK]", origin) if s == "mask" else vf.Tok(int(t), str(x), origin))
    return out


def offset(r) -> int:
    """Output tokens a run starts with (a branch's inherited prefix, the edited token included)."""
    return len((r.trace.meta.get("fork") or {}).get("prefix_ids") or [])


def shown_position(r) -> int | None:
    """The output position of the first token of the step a run shows."""
    steps = r.trace.steps
    if not steps:
        return None
    cur = r.cursor if r.cursor is not None else len(steps) - 1
    return offset(r) + engine_fork.tokens_before(r.trace, cur)


def fork_position(meta: dict) -> int:
    """The output position a branch starts to differ at by construction: its edited token's, else its first own."""
    f = meta.get("fork") or {}
    canvas = (f.get("edit") or {}).get("canvas")
    if canvas:
        return int(canvas.get("position") or 0)
    forced = len(((f.get("edit") or {}).get("force") or {}).get("tokens") or [])
    return len(f.get("prefix_ids") or []) - (1 if (f.get("edit") or {}).get("token") else forced)


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
            div = vf.first_divergence(pa, bt)
            if div is None and len(pa) != len(bt):
                div = min(len(pa), len(bt))
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
    metrics_table(key, lm, [parent_id, side])


def compact_controls(key: str) -> None:
    """controls.step_controls for half a page: the same actions (controls._act) and keys, icons for labels."""
    r = controls.runner(key)
    if r is None:
        return
    at_newest = r.cursor is None or r.cursor >= len(r.trace.steps) - 1
    cols = st.columns(4)
    cols[0].button("◀", key=f"{key}_back", help="show the previous step (pauses)", disabled=r.cursor in (None, 0),
                   on_click=controls._act, args=(key, "back"), width="stretch")
    cols[1].button("▶", key=f"{key}_fwd", help="next recorded step, or compute exactly one more (pauses)",
                   disabled=r.finished and at_newest, on_click=controls._act, args=(key, "fwd"), width="stretch")
    if r.state == RUNNING:
        cols[2].button("⏸", key=f"{key}_pause", help="pause after the step in progress", on_click=controls._act,
                       args=(key, "pause"), width="stretch")
    elif r.finished:
        cols[2].button("▶▶", key=f"{key}_resume", help="show the run's last step", disabled=r.following,
                       on_click=controls._act, args=(key, "last"), width="stretch")
    else:
        cols[2].button("⏵ Resume", key=f"{key}_resume", help="continue decoding", on_click=controls._act,
                       args=(key, "resume"), width="stretch")
    cols[3].button("✕", key=f"{key}_cancel", help="stop the run for good", disabled=r.finished,
                   on_click=controls._act, args=(key, "cancel"), width="stretch")
    n = len(r.trace.steps)
    if n > 1 and r.state != RUNNING:
        cur = r.cursor or 0
        widget = f"{key}_jump_{n}_{cur}"
        st.slider("jump to step", 0, n - 1, cur, key=widget, label_visibility="collapsed",
                  on_change=controls._jump, args=(key, widget))


def held_key(key: str, i: int) -> str:
    return f"{key}_b{i}"


def step_summary(r) -> None:
    """The step a run shows, in one line: its tokens, and for an AR step the probability and the runner-up."""
    if r is None or not r.trace.steps:
        return
    cur = r.cursor if r.cursor is not None else len(r.trace.steps) - 1
    s = r.trace.steps[cur]
    text = s.get("token_text") if s.get("kind") == "ar" else s.get("new_text")
    line = f"step {cur} ({s.get('kind')}): {md_text(repr(text or ''), 80)}"
    if isinstance(s.get("prob"), (int, float)):
        line += f" · p = {s['prob']:.3f}"
    st.caption(line)


def _judged(lm, r) -> float | None:
    """engine.quality.judged_perplexity of a finished run's whole answer (by the loaded model), kept per run."""
    cache = st.session_state.setdefault("lab_fork_judged", {})
    k = (id(r), len(r.trace.final_ids))
    if k not in cache:
        if lm is None or not r.finished or not r.trace.meta.get("prompt_ids"):
            return None
        try:
            cache[k] = remote.decoder().task(lm, "judged", prompt_ids=list(r.trace.meta["prompt_ids"]),
                                             output_ids=engine_fork.output_ids(r.trace))
        except LabError:
            cache[k] = None
    return cache[k]


def metrics_table(key: str, lm, ids: list[int]) -> None:
    """Both runs' tokens, forwards, judged perplexity and first divergence (engine.quality)."""
    import pandas as pd
    held = {i: (r, e) for i, r, e in runs(key)}
    answers = {i: engine_fork.output_ids(held[i][0].trace) for i in ids if i in held}
    rows = []
    for i in ids:
        if i not in held:
            continue
        r, e = held[i]
        c = r.trace.counters
        ppl = _judged(lm, r)
        other = next((j for j in ids if j != i), None)
        div = quality.first_divergence(answers[i], answers[other]) if other in answers else None
        rows.append({"run": label(i, e), "method": r.trace.meta.get("method"), "state": r.state,
                     "tokens": len(answers[i]), "own tokens": len(r.trace.final_ids),
                     "forwards": c.target_forwards + c.draft_forwards,
                     "judged perplexity": None if ppl is None else round(float(ppl), 3),
                     "first divergence": div})
    st.dataframe(pd.DataFrame(rows), hide_index=True, width="stretch")
    st.caption("tokens: the whole answer (a branch's inherited tokens included); forwards: the run's own (a "
               "branch's one prefill of its prefix, then its steps); judged perplexity: the loaded model's, over "
               "the answer up to its first end-of-text (when finished); first divergence: the first output "
               "position where the two answers differ.")


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


# ---- Replay: a saved trace with branches (no model) --------------------------------------------------------
def saved_runs(root: T.Trace) -> list[T.Trace]:
    """The original (0) and its branches (1..n) of a loaded trace."""
    return [root] + list(root.branches)


def saved_tokens(root: T.Trace) -> list[list[vf.Tok]]:
    out: list[list[vf.Tok]] = []
    for i, t in enumerate(saved_runs(root)):
        own = vf.own_tokens(t.steps, t.final_ids)
        out.append(own if i == 0 else vf.branch_tokens(out[t.meta["fork"]["parent"]], t.meta["fork"], own))
    return out


def saved_label(root: T.Trace, i: int) -> str:
    t = saved_runs(root)[i]
    return "original" if i == 0 else f"branch {i} ({t.meta.get('method')}, {describe(t.meta)})"


def replay_tree(root: T.Trace, selected: int, cursor: int | None) -> None:
    """A saved trace's branch tree and the selected branch beside its parent, aligned by output position."""
    toks = saved_tokens(root)
    nodes = [{"id": i, "parent": None if i == 0 else t.meta["fork"]["parent"],
              "at": fork_position(t.meta), "length": len(toks[i]),
              "state": "saved", "label": "original" if i == 0 else f"branch {i}"}
             for i, t in enumerate(saved_runs(root))]
    st.plotly_chart(vf.tree_figure(nodes, selected=selected), key="replay_fk_tree", width="stretch")
    if selected == 0:
        return
    t = saved_runs(root)[selected]
    f = t.meta["fork"]
    p = f["parent"]
    at = fork_position(t.meta)
    div = vf.first_divergence(toks[p], toks[selected])
    if div is None and len(toks[p]) != len(toks[selected]):
        div = min(len(toks[p]), len(toks[selected]))
    shown = None
    if t.steps and cursor is not None:
        shown = len(f.get("prefix_ids") or []) + engine_fork.tokens_before(t, min(cursor, len(t.steps) - 1))
    st.markdown(vf.aligned_html([("original" if p == 0 else f"branch {p}", toks[p], None),
                                 (f"branch {selected}", toks[selected], shown)], at, div), unsafe_allow_html=True)
