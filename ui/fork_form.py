"""The "Fork here" form of a page's what-if branches (ui/branches.py draws the rest): which run and step to fork,
the edit (a token, another method with its own options, other sampling settings; a KV policy or a diffusion
canvas edit on the stateful pages), and the button that starts the branch."""
from __future__ import annotations

import streamlit as st

from engine import fork as engine_fork
from ui import branches as B
from ui import common
from viz.safe import md_text


def fork_controls(key: str, lm, prefix: str, allow_token: bool) -> None:
    """The 'Fork here' controls: from which run, at which step, with which edit."""
    held = B.runs(key)
    title = "Fork here: another token, method, options or sampling from a step on" if allow_token else \
        "Fork from this step: another method, options or sampling from the step on"
    with st.expander(title, expanded=False):
        ids = [i for i, _, _ in held]
        names = {i: B.label(i, e) for i, _, e in held}
        src = st.selectbox("fork", ids, format_func=lambda i: names.get(i, str(i)), key=f"{prefix}_fk_from")
        r = dict((i, rr) for i, rr, _ in held).get(src)
        if r is None or not r.trace.steps:
            st.caption("That run has no steps yet.")
            return
        n = len(r.trace.steps)
        cur = r.cursor if r.cursor is not None else n - 1
        step = st.number_input("at step", 0, n - 1, cur, key=f"{prefix}_fk_step_{src}_{n}_{cur}",
                               help="the branch keeps what the run committed before this step and decodes the "
                                    "rest with the edit")
        edit: dict = {}
        blocked = False
        rec = r.trace.steps[int(step)]
        if allow_token and rec.get("kind") == "ar":
            cands = [c for c in rec.get("candidates") or [] if isinstance(c.get("id"), int)]
            choices = [None] + [c["id"] for c in cands]
            text_of = {c["id"]: c.get("text", "?") for c in cands}
            tok = st.selectbox("token at that step", choices, key=f"{prefix}_fk_tok_{src}_{int(step)}",
                               format_func=lambda t: "(the run's own choice)" if t is None else
                               f"{text_of.get(t)!r} #{t}" + (" (chosen)" if t == rec.get("token_id") else ""))
            typed = st.text_input("or type a token's text", "", key=f"{prefix}_fk_text",
                                  help="one token of this tokenizer, e.g. ' cat' (a leading space is part of it)")
            if typed:
                edit["token"] = typed
            elif tok is not None:
                edit["token"] = int(tok)
        parent_method = r.trace.meta.get("method")
        if parent_method in engine_fork.STATEFUL:
            more = stateful_edit(r, rec, f"{prefix}_fk_{src}")
            if more is None:
                return
            edit.update(more)
            _sampling_and_go(key, lm, prefix, src, int(step), edit)
            return
        if rec.get("kind") == "speculative" and isinstance(rec.get("nodes"), list):
            force = force_edit(rec, f"{prefix}_fk_{src}_{int(step)}")
            if force:
                edit["force"] = force
        methods_ = list(engine_fork.FORKABLE)
        method = st.selectbox("method from the step on", methods_, key=f"{prefix}_fk_method",
                              index=methods_.index(parent_method) if parent_method in methods_ else 0)
        if method in ("jacobi", "lookahead") and rec.get("kind") in ("jacobi", "lookahead"):
            g = guesses_edit(rec, f"{prefix}_fk_{src}_{int(step)}")
            if g is False:
                blocked = True   # the message is shown; every widget stays drawn, the Fork button is off
            elif g is not None:
                edit["guesses"] = g
        other_opts = method != parent_method or st.checkbox("other options", False, key=f"{prefix}_fk_opts")
        if method != parent_method:
            edit["method"] = method
        if other_opts:
            edit["options"] = common_options(method, f"{prefix}_fk_{method}")
        _sampling_and_go(key, lm, prefix, src, int(step), edit, blocked)


def force_edit(rec: dict, prefix: str) -> dict | None:
    """A speculative round's verdict overridden: force-accept a rejected drafted node (its path with it) or
    force-reject an accepted one (the target's next-best token instead). None: the round's own verdict."""
    drafted = [n for n in rec["nodes"] if isinstance(n, dict) and n.get("id") and not n.get("appended")]
    if not drafted:
        return None
    what = st.radio("verdict of this round", ["the verifier's own", "force-accept a node", "force-reject a node"],
                    horizontal=True, key=f"{prefix}_force",
                    help="Override the verification of one drafted node to see what it costs. The branch is not "
                         "lossless: its answer is no longer what the target model alone would write.")
    if what == "the verifier's own":
        return None
    accept = what == "force-accept a node"
    pick = [n for n in drafted if (n.get("status") != "accepted") == accept] or drafted
    node = st.selectbox("node", [n["id"] for n in pick], key=f"{prefix}_force_node",
                        format_func=lambda i: next(f"#{i} {n.get('text', '?')!r} (depth {n.get('depth')}, "
                                                   f"{n.get('status')})" for n in pick if n["id"] == i))
    st.caption("The branch commits " + ("the drafted path to that node, then decodes on." if accept else
                                        "the path to the node's parent and the target's next-best token instead "
                                        "of the node's, then decodes on.") + " It is labelled not lossless.")
    return {"node": int(node), "accept": accept}


def guesses_edit(rec: dict, prefix: str):
    """A Jacobi / lookahead branch's first guesses: None (the initialiser's), a list of ids or a text; False
    when what was typed is not valid (the message is shown)."""
    if rec.get("kind") == "jacobi":
        was = list(rec.get("guess_ids") or [])
    else:
        was = list(((rec.get("window") or [{}])[0] or {}).get("ids") or [])
    if not st.checkbox("edit the guesses", False, key=f"{prefix}_g_on",
                       help="The branch starts from the committed prefix at this iteration with these guesses (the "
                            "block's, or the lookahead window's first level). Greedy output stays the same: the "
                            "guesses change how many iterations it takes."):
        return None
    how = st.radio("as", ["token ids", "text"], horizontal=True, key=f"{prefix}_g_how")
    if how == "text":
        typed = st.text_input("guesses (text, tokenized)", "", key=f"{prefix}_g_text")
        return typed or None
    typed = st.text_input("guesses (token ids, comma-separated)", ", ".join(map(str, was)), key=f"{prefix}_g_ids",
                          help="the guesses recorded at this iteration, to edit")
    parts = [p.strip() for p in typed.replace(" ", ",").split(",") if p.strip()]
    if not parts:
        return None
    if not all(p.isascii() and p.isdigit() and len(p) <= 9 for p in parts):
        st.error("Guesses are token ids: whole numbers separated by commas.")
        return False
    return [int(p) for p in parts]


def _sampling_and_go(key: str, lm, prefix: str, src: int, step: int, edit: dict, blocked: bool = False) -> None:
    if st.checkbox("other sampling settings", False, key=f"{prefix}_fk_samp"):
        cfg = common.sampling_controls(f"{prefix}_fk", container=st.container())
        if cfg is None:
            return
        edit["sampling"] = cfg
    if st.button("Fork", key=f"{prefix}_fk_go", type="primary", disabled=lm is None or blocked):
        B.start_fork(key, lm, src, step, **edit)
        st.rerun()


def _seeded(method: str, prefix: str, params: dict, names) -> None:
    """The fork's option widgets start at the parent run's values (once per run and step)."""
    spec = engine_methods().get(method)
    for k in names:
        if k in params and k in spec.options and f"{prefix}_{k}" not in st.session_state:
            st.session_state[f"{prefix}_{k}"] = params[k]


def engine_methods():
    from engine import methods
    return methods


def stateful_edit(r, rec: dict, prefix: str) -> dict | None:
    """A KV run forks with another policy / budget / knobs from the step on (engine.fork replays its tokens to
    there); a diffusion run with a canvas edit (a position set to a token or masked again) or another rule /
    threshold from the step on. The edit, or None when a widget's value is refused."""
    from ui.options import option_widgets
    method = r.trace.meta.get("method")
    params = r.trace.meta.get("params") or {}
    edit: dict = {}
    if method == "kv":
        from engine.methods.kv import SWITCHABLE
        st.caption("The branch replays the run's tokens through its policy up to the step (exact: one forward per "
                   "replayed step), then evicts with these settings.")
        if st.checkbox("other policy / budget", True, key=f"{prefix}_kv_on"):
            _seeded("kv", f"{prefix}_kv", params, SWITCHABLE)
            fixed = {k: v for k, v in params.items() if k in engine_methods().get("kv").options and k not in SWITCHABLE}
            edit["options"] = option_widgets("kv", f"{prefix}_kv", st.container(), only=SWITCHABLE, fixed=fixed)
        return edit
    n = len(rec.get("state") or [])
    st.caption("The branch resumes the run from its canvas before the step (exact when greedy with a deterministic "
               "rule), with the edit below.")
    what = st.radio("canvas edit", ["none", "set a position to a token", "mask a position"], horizontal=True,
                    key=f"{prefix}_dlm_what")
    if what != "none" and n:
        pos = int(st.number_input("position of the answer", 0, n - 1, 0, key=f"{prefix}_dlm_pos"))
        state, toks, texts = rec.get("state") or [], rec.get("tokens") or [], rec.get("texts") or []
        st.caption(f"position {pos} before the step: " + ("[MASK]" if state[pos] != "committed" else
                   md_text(repr(texts[pos]), 60)) + (f" (the model's guess then: {md_text(repr(texts[pos]), 60)})"
                                                     if state[pos] != "committed" else ""))
        edit["position"] = pos
        if what == "mask a position":
            edit["mask"] = True
        else:
            typed = st.text_input("token (its text, one token)", "", key=f"{prefix}_dlm_text",
                                  help="e.g. ' cat' (a leading space is part of it); empty: the guess above")
            edit["token"] = typed if typed else int(toks[pos])
    if st.checkbox("other rule / threshold", False, key=f"{prefix}_dlm_rule_on"):
        fixed = {k: params[k] for k in engine_fork.DIFFUSION_FIXED if k in params}
        names = [k for k in engine_methods().get("diffusion").options if k not in fixed]
        _seeded("diffusion", f"{prefix}_dlm", params, names)
        edit["options"] = option_widgets("diffusion", f"{prefix}_dlm", st.container(), skip=fixed, fixed=fixed)
    return edit


def common_options(method: str, prefix: str) -> dict:
    from ui.options import option_widgets
    return option_widgets(method, prefix, st.container())
