"""Re-warp views: one recorded step's candidates under the run's sampling settings and under new ones, and the
token stream marked where the new settings would have gone another way (engine/rewarp.py computes the numbers;
no torch or streamlit here). Every trace string is escaped (viz.safe)."""
from __future__ import annotations

import plotly.graph_objects as go

from viz import layout as L
from viz import legend
from viz import window as W
from viz.safe import html_text, plot_text

DIFFERS = legend.REJECTED     # the new settings' most likely token is not the one taken
CUT = legend.UNVERIFIED       # the taken token has probability 0 under the new settings (filtered out)


def candidates_figure(step: dict, res: dict) -> go.Figure:
    """The step's candidates: probability after the run's warpers and after the new ones (res: rewarp.step)."""
    texts = {c["id"]: c.get("text") for c in step.get("candidates") or []}
    cands = res.get("candidates") or []
    taken = step.get("token_id")
    labels = [plot_text(f"{repr(texts[c['id']])[1:-1] if texts.get(c['id']) is not None else '?'}  #{c['id']}")
              for c in cands]
    fig = go.Figure()
    fig.add_bar(y=labels, x=[c.get("was_p_warped") or 0 for c in cands], orientation="h", name="the run's settings",
                marker_color="#BBBBBB")
    fig.add_bar(y=labels, x=[c.get("p_warped") or 0 for c in cands], orientation="h", name="new settings",
                marker_color=[legend.BONUS if c["id"] == taken else "#6FA8DC" for c in cands])
    fig.update_layout(barmode="group", height=90 + 28 * max(len(cands), 1), margin=dict(l=10, r=10, t=30, b=10),
                      yaxis=dict(autorange="reversed"), xaxis=dict(title="probability", range=[0, 1]))
    p = res.get("chosen_p")
    L.title(fig, plot_text(f"Step {step.get('index')} re-warped: the taken token has p = "
                           f"{'?' if p is None else f'{p:.3f}'}" + ("" if res.get("exact") else " (over the candidates)")),
            "dark blue: the token the run took; grey: its probability under the run's own settings")
    L.legend_below(fig)
    L.themed(fig)
    return fig


def differs(step: dict, res: dict | None) -> bool:
    return res is not None and res.get("choice") != step.get("token_id")


def stream_html(steps: list[dict], results: list[dict | None], cursor: int,
                max_tokens: int = W.MAX_TOKENS) -> str:
    """The recorded tokens up to `cursor`: red underline where the new settings' most likely token differs from
    the one taken, struck through (grey) where the new settings give the taken token probability 0."""
    upto = min(cursor, len(steps) - 1)
    first = W.stream_start(steps, upto, lambda s: 1, max_tokens)
    spans = [W.earlier_marker(first)]
    for i in range(first, upto + 1):
        s, r = steps[i], results[i] if i < len(results) else None
        p = None if r is None else r.get("chosen_p")
        style = "padding:1px 0;margin:0 1px;border-bottom:3px solid transparent"
        tip = f"step {i}"
        if r is not None:
            tip += f": p under the new settings = {'?' if p is None else f'{p:.3f}'}"
        if differs(s, r):
            style += f";border-bottom-color:{DIFFERS}"
            tip += f"; most likely now: #{r.get('choice')}"
        if p == 0:
            style += f";text-decoration:line-through;color:{CUT}"
        if i == upto:
            style += ";outline:2px solid currentColor"
        spans.append(f'<span title="{html_text(tip)}" style="{style}">'
                     f'{html_text(s.get("token_text", "?"), newline="↵<br>")}</span>')
    return f'<div style="font-family:monospace;line-height:1.9;font-size:0.95em">{"".join(spans)}</div>'
