"""Contrastive search figures, pure functions of step records (no torch, no streamlit).

An AR-kind step of contrastive search carries a `contrastive` block: `alpha` (the penalty's weight), the
k candidates (`candidates`: id, text, model probability `p`, degeneration `penalty` = the largest cosine
similarity of the candidate's last hidden state with any earlier position's, `score` = (1 - alpha) * p -
alpha * penalty, `chosen`) and `argmax_prob_id`, the likeliest token (greedy's choice at this step).
"""
from __future__ import annotations

import plotly.graph_objects as go

from viz import layout as L
from viz import legend
from viz.safe import plot_text

CHOSEN = legend.BONUS          # the candidate contrastive search took (blue)
LIKELIEST = legend.RESAMPLED   # the likeliest candidate, greedy's choice (orange)
OTHER = legend.UNVERIFIED      # every other candidate (grey)


def _tok(text) -> str:
    return repr(str(text if text is not None else "?"))[1:-1] or "∅"


def _short(text, n: int = 16) -> str:
    t = _tok(text)
    return t if len(t) <= n else t[: n - 1] + "…"


def fmt(x, digits: int = 3) -> str:
    return "-" if x is None else f"{x:.{digits}f}"


def block(step: dict) -> dict | None:
    b = step.get("contrastive")
    return b if isinstance(b, dict) and b.get("candidates") else None


def chosen(b: dict) -> dict | None:
    return next((c for c in b["candidates"] if c.get("chosen")), None)


def likeliest(b: dict) -> dict:
    """The candidate with the argmax probability (the first candidate when `argmax_prob_id` is missing)."""
    want = b.get("argmax_prob_id")
    return next((c for c in b["candidates"] if c["id"] == want), b["candidates"][0])


def differs(step: dict) -> bool | None:
    """True when contrastive search took another token than the likeliest one at this step (None: no block)."""
    b = block(step)
    if b is None:
        return None
    c = chosen(b)
    return c is not None and c["id"] != likeliest(b)["id"]


def summary(steps: list[dict], cursor: int) -> dict:
    """Up to the cursor: steps with a contrastive block, and how many of them took another token than the
    likeliest (the steps, listed)."""
    upto = steps[: cursor + 1]
    flags = [(s.get("index", i), differs(s)) for i, s in enumerate(upto)]
    scored = [i for i, d in flags if d is not None]
    other = [i for i, d in flags if d]
    return {"steps": len(scored), "not_likeliest": len(other), "which": other}


def candidates_figure(step: dict) -> go.Figure:
    """One step's candidates: model probability (y) against degeneration penalty (x); the chosen candidate
    and the likeliest one marked; a dashed line of equal score through the chosen one (every candidate
    below and to the right of it scores less)."""
    b = block(step) or {"candidates": []}
    cands = b["candidates"]
    alpha = b.get("alpha")
    ch = chosen(b) if cands else None
    top = likeliest(b) if cands else None
    fig = go.Figure()
    groups = (("other candidate", OTHER, "circle", lambda c: c is not ch and c is not top),
              ("likeliest (greedy's choice)", LIKELIEST, "diamond", lambda c: c is top and c is not ch),
              ("chosen", CHOSEN, "star", lambda c: c is ch))
    for name, colour, symbol, pick in groups:
        sel = [c for c in cands if pick(c)]
        if not sel:
            continue
        if name == "chosen" and ch is top:
            name = "chosen (also the likeliest)"
        fig.add_scatter(
            x=[c.get("penalty") for c in sel], y=[c.get("p") for c in sel], mode="markers+text", name=name,
            text=[plot_text(_short(c.get("text"), 10)) for c in sel], textposition="top center",
            marker=dict(color=colour, symbol=symbol, size=16 if symbol != "circle" else 11,
                        line=dict(width=1, color=L.NEUTRAL)),
            hovertext=[plot_text(f"{_tok(c.get('text'))} #{c['id']}") + f"<br>p = {fmt(c.get('p'))}"
                       f"<br>penalty (max cos) = {fmt(c.get('penalty'))}<br>score = {fmt(c.get('score'))}"
                       for c in sel], hoverinfo="text")
    xs = [c["penalty"] for c in cands if c.get("penalty") is not None]
    lo, hi = (min(xs + [0.0]) - 0.05, max(xs + [1.0]) + 0.05) if xs else (-0.05, 1.05)
    if ch is not None and alpha is not None and ch.get("score") is not None:
        if alpha < 1:        # (1 - a) p - a x = s  ->  p = (s + a x) / (1 - a)
            line_x = [lo, hi]
            line_y = [(ch["score"] + alpha * x) / (1 - alpha) for x in line_x]
        else:                # alpha = 1: the score is -penalty alone
            line_x, line_y = [ch.get("penalty")] * 2, [0, 1]
        fig.add_scatter(x=line_x, y=line_y, mode="lines", name=f"equal score ({fmt(ch['score'])})",
                        line=dict(dash="dash", color=CHOSEN, width=1), hoverinfo="skip")
    fig.update_layout(height=340, margin=dict(l=10, r=10, t=40, b=10),
                      xaxis=dict(title="degeneration penalty (max cosine with the context)", range=[lo, hi]),
                      yaxis=dict(title="model probability p", range=[-0.05, 1.1]))
    t = f"Step {step.get('index')}: " + (f"chose {plot_text(_short(ch.get('text')))}" if ch else "no candidates")
    L.title(fig, t, f"score = (1 − α)·p − α·penalty, α = {fmt(alpha, 2)}" + (
        "" if ch is None or ch is top else f" · greedy would take {plot_text(_short(top.get('text')))}"))
    L.legend_below(fig)
    L.themed(fig)
    return fig


def rows(step: dict) -> list[dict]:
    """The candidates as table rows, likeliest first."""
    b = block(step)
    if b is None:
        return []
    return [{"token": _tok(c.get("text")), "id": c["id"], "p": c.get("p"), "penalty": c.get("penalty"),
             "score": c.get("score"), "chosen": "yes" if c.get("chosen") else ""} for c in b["candidates"]]
