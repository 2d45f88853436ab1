"""How a branch is shown beside its parent: labels and edit descriptions, output positions, the half-page step
controls, the step summary, the metrics table, and a saved trace's branch tree (pages/7_Replay.py).

Functions of runners, traces and their metas, with no branch store of their own: ui/branches.py (the store of a
page's branches, the fork operation and the page section) draws with these and re-exports every name here, so
`ui.branches.<name>` keeps working. Imports nothing of ui.branches (no cycle).
"""
from __future__ import annotations

import streamlit as st

from engine import fork as engine_fork
from engine import quality, remote
from engine import trace as T
from engine.errors import LabError
from engine.runner import RUNNING
from ui import controls
from viz import fork as vf
from viz.safe import md_text


# ---- labels and output positions ----------------------------------------------------------------------------
def label(i: int, entry: dict | None) -> str:
    return "original" if entry is None else f"branch {i}"


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


def divergence(a: list[vf.Tok], b: list[vf.Tok]) -> int | None:
    """The first output position where two runs' tokens differ; the shorter one's length when one is a prefix of
    the other; None when they are the same."""
    div = vf.first_divergence(a, b)
    if div is None and len(a) != len(b):
        div = min(len(a), len(b))
    return div


# ---- one run of the side-by-side view: its step controls, its step, the metrics of both ----------------------
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


def metrics_table(held: dict, lm, ids: list[int]) -> None:
    """Both runs' tokens, forwards, judged perplexity and first divergence (engine.quality); held: {id: (runner,
    branch entry)} of the page's runs (ui.branches.runs)."""
    import pandas as pd
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
    div = divergence(toks[p], toks[selected])
    shown = None
    if t.steps and cursor is not None:
        shown = len(f.get("prefix_ids") or []) + engine_fork.tokens_before(t, min(cursor, len(t.steps) - 1))
    st.markdown(vf.aligned_html([("original" if p == 0 else f"branch {p}", toks[p], None),
                                 (f"branch {selected}", toks[selected], shown)], at, div), unsafe_allow_html=True)
