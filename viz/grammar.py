"""Grammar-constrained decoding figures: what the grammar let through at a step (the model's top candidates before
the mask, allowed or blocked, against the distribution after it), how much of the vocabulary and of the model's
probability the mask kept over the run, and the steps where the model wanted another token than it got.

Every trace string goes through viz.safe (plot_text in figures); no streamlit, no torch."""
from __future__ import annotations

import plotly.graph_objects as go

from viz import layout as L
from viz import legend
from viz import window as W
from viz.safe import plot_text

ALLOWED = legend.ACCEPTED      # a token the grammar allows here (green)
BLOCKED = legend.REJECTED      # a token it blocks (red)
CHOSEN = legend.BONUS          # the token chosen (blue)
MODEL = "#BBBBBB"              # the model's probability without the mask (grey)


def _label(text, tid) -> str:
    return plot_text(f"{repr(text if text is not None else '?')[1:-1] or '∅'}  #{tid}")


def _short(text, n: int = 18) -> str:
    r = repr(text if text is not None else "?")
    return r if len(r) <= n else r[: n - 2] + "…'"


def block(step: dict) -> dict:
    return step.get("grammar") or {}


def candidates_figure(step: dict, max_rows: int = 12) -> go.Figure:
    """The model's top candidates without the mask (grey: its p; the bar's outline green when the grammar allows
    the token, red when it blocks it) and, for the allowed ones, the probability after the mask (renormalised over
    the allowed tokens); the chosen token in blue."""
    g = block(step)
    after = {c["id"]: c.get("p_raw") or 0.0 for c in step.get("candidates", [])}
    rows = sorted(g.get("candidates_unconstrained", []), key=lambda c: -(c.get("p_raw") or 0))[:max_rows]
    chosen = step.get("token_id")
    if chosen is not None and chosen not in {c["id"] for c in rows}:   # the chosen token always shows
        rows.append({"id": chosen, "text": step.get("token_text"), "p_raw": g.get("chosen_p_unconstrained"),
                     "allowed": True})
    labels = [_label(c.get("text"), c["id"]) for c in rows]
    fig = go.Figure()
    fig.add_bar(y=labels, x=[c.get("p_raw") or 0 for c in rows], orientation="h", name="model p (no mask)",
                marker=dict(color=MODEL, line=dict(color=[ALLOWED if c.get("allowed") else BLOCKED for c in rows],
                                                   width=2)),
                customdata=["allowed" if c.get("allowed") else "blocked by the grammar" for c in rows],
                hovertemplate="%{y}<br>model p %{x:.4f}<br>%{customdata}<extra></extra>")
    fig.add_bar(y=labels, x=[after.get(c["id"], 0.0) if c.get("allowed") else 0.0 for c in rows], orientation="h",
                name="after the mask", marker_color=[CHOSEN if c["id"] == chosen else ALLOWED for c in rows],
                hovertemplate="%{y}<br>p after the mask %{x:.4f}<extra></extra>")
    fig.update_layout(barmode="group", height=110 + 26 * len(rows), margin=dict(l=10, r=10, t=50, b=10),
                      yaxis=dict(autorange="reversed"), xaxis=dict(title="probability", range=[0, 1.02]))
    wanted, got = g.get("wanted_text"), step.get("token_text")
    head = (f"Step {step.get('index')}: got {_short(got)}" if g.get("wanted_id") == chosen else
            f"Step {step.get('index')}: wanted {_short(wanted)}, got {_short(got)}")
    L.title(fig, plot_text(head), "grey: the model's p without the mask (outline green: allowed, red: blocked)"
            f"{L.SEP}green: p after the mask{L.SEP}blue: chosen")
    L.legend_below(fig)
    L.themed(fig)
    return fig


def run_figure(steps: list[dict], cursor: int) -> go.Figure:
    """Over the run: the probability mass the mask removed (0..1) and the share of the vocabulary it allowed (log
    axis); markers where the model's own choice was blocked (red) and where one token was forced (grey)."""
    rows = [(s["index"], block(s)) for s in steps if block(s)]
    x = [i for i, _ in rows]
    rx, ry = W.line_points(x, [g.get("removed_mass") for _, g in rows], keep=cursor)
    sx, sy = W.line_points(x, [max(g.get("allowed_share") or 0, 1e-7) for _, g in rows], keep=cursor)
    fig = go.Figure()
    mode = "lines+markers" if len(rx) == len(x) else "lines"
    fig.add_scatter(x=rx, y=ry, name="removed mass", mode=mode, line_color=BLOCKED,
                    hovertemplate="step %{x}<br>removed mass %{y:.3f}<extra></extra>")
    fig.add_scatter(x=sx, y=sy, name="allowed share (log)", mode="lines", yaxis="y2", line_color=ALLOWED,
                    hovertemplate="step %{x}<br>allowed %{y:.2e} of the vocabulary<extra></extra>")
    blocked = [(i, g) for i, g in rows if g.get("wanted_id") is not None and not _wanted_allowed(g)]
    if blocked and len(blocked) <= W.MAX_POINTS:
        fig.add_scatter(x=[i for i, _ in blocked], y=[g.get("removed_mass") for _, g in blocked], mode="markers",
                        name="model's choice blocked", marker=dict(color=BLOCKED, size=9, symbol="x"),
                        text=[plot_text(f"wanted {_short(g.get('wanted_text'), 30)}") for _, g in blocked],
                        hovertemplate="step %{x}<br>%{text}<extra></extra>")
    forced = [(i, g) for i, g in rows if g.get("forced")]
    if forced and len(forced) <= W.MAX_POINTS:
        fig.add_scatter(x=[i for i, _ in forced], y=[g.get("removed_mass") for _, g in forced], mode="markers",
                        name="forced (one token allowed)", marker=dict(color=L.NEUTRAL, size=7, symbol="square"),
                        hovertemplate="step %{x}: forced<extra></extra>")
    fig.add_vline(x=cursor, line_dash="dot", line_color=L.NEUTRAL)
    fig.update_layout(height=300, margin=dict(l=10, r=10, t=50, b=10), xaxis_title="step",
                      yaxis=dict(title="removed mass", range=[0, 1.05]),
                      yaxis2=L.secondary_axis("allowed share", type="log", range=[-7.2, 0.1]))
    L.title(fig, "What the grammar removed", ("removed mass: the model's probability on blocked tokens"
                                              f"{L.SEP}allowed share: allowed tokens / vocabulary"
                                              + W.downsampled_note(len(x), len(rx))), legend_above=True)
    L.legend_above(fig)
    L.themed(fig)
    return fig


def _wanted_allowed(g: dict) -> bool:
    """Was the model's top token (no mask) allowed? (Read from the recorded candidates; the top one is there.)"""
    for c in g.get("candidates_unconstrained", []):
        if c["id"] == g.get("wanted_id"):
            return bool(c.get("allowed"))
    return True


def wanted_rows(steps: list[dict], cursor: int, n: int = 12) -> list[dict]:
    """The last `n` steps up to the cursor: what the model wanted (its top token without the mask) and what it got.
    Plain values for a dataframe (it shows text literally)."""
    out = []
    for s in steps[max(0, cursor - n + 1): cursor + 1]:
        g = block(s)
        if not g:
            continue
        out.append({"step": s["index"], "wanted": repr(g.get("wanted_text"))[1:-1],
                    "p wanted": g.get("wanted_p"), "got": repr(s.get("token_text"))[1:-1],
                    "p got (no mask)": g.get("chosen_p_unconstrained"), "allowed tokens": g.get("allowed"),
                    "removed mass": g.get("removed_mass"), "forced": bool(g.get("forced")),
                    "blocked": not _wanted_allowed(g)})
    return out[::-1]


def run_summary(steps: list[dict], cursor: int) -> dict:
    """Counts up to the cursor: steps, forced steps, steps where the model's choice was blocked, mean removed mass,
    and the stop status when the cursor is on the last step."""
    gs = [block(s) for s in steps[: cursor + 1] if block(s)]
    n = len(gs)
    last = block(steps[cursor]) if steps else {}
    return {"steps": n, "forced": sum(bool(g.get("forced")) for g in gs),
            "blocked": sum(not _wanted_allowed(g) for g in gs),
            "mean_removed": sum(g.get("removed_mass") or 0 for g in gs) / n if n else None,
            "stop": last.get("stop"), "complete": last.get("complete")}
