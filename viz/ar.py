"""Autoregressive view figures: token stream, per-step candidates, probability / entropy over time."""
from __future__ import annotations

import math

import plotly.graph_objects as go

from viz import legend
from viz.safe import html_text, plot_text


def _show(text: str) -> str:
    return html_text(text, newline="↵<br>")


def token_stream_html(steps: list[dict], upto: int, colour_by: str = "prob") -> str:
    """Tokens of steps[0..upto] as coloured spans; hover shows probability and entropy."""
    max_h = max([s.get("entropy") or 0 for s in steps] + [1e-9])
    spans = []
    for i, s in enumerate(steps[: upto + 1]):
        p = s.get("prob")
        h = s.get("entropy")
        if colour_by == "entropy" and h is not None:
            colour = legend.prob_colour(1 - min(1.0, h / max(max_h, 1.0)))
        else:
            colour = legend.prob_colour(p if p is not None else 1.0)
        border = "2px solid #000" if i == upto else "1px solid transparent"
        tip = f"step {i}: p={p:.3f}" if p is not None else f"step {i}"
        if h is not None:
            tip += f", entropy={h:.2f} nats"
        spans.append(f'<span title="{html_text(tip)}" style="background:{colour}33;border-bottom:3px solid {colour};'
                     f'outline:{border};padding:1px 0;margin:0 1px">{_show(s.get("token_text", "?"))}</span>')
    return f'<div style="font-family:monospace;line-height:1.9;font-size:0.95em">{"".join(spans)}</div>'


def candidates_figure(step: dict) -> go.Figure:
    """Top-k candidates of one step: probability before and after warping; the chosen token marked."""
    cands = sorted(step.get("candidates", []), key=lambda c: -(c.get("p_raw") or 0))
    labels = [plot_text(f"{repr(c['text'])[1:-1] or '∅'}  #{c['id']}") for c in cands]
    chosen = step.get("token_id")
    fig = go.Figure()
    fig.add_bar(y=labels, x=[c.get("p_raw") or 0 for c in cands], orientation="h", name="model p (T=1, no filter)",
                marker_color="#BBBBBB")
    fig.add_bar(y=labels, x=[c.get("p_warped") or 0 for c in cands], orientation="h", name="after warpers",
                marker_color=[legend.BONUS if c["id"] == chosen else "#6FA8DC" for c in cands])
    fig.update_layout(barmode="group", height=60 + 28 * len(cands), margin=dict(l=10, r=10, t=30, b=10),
                      yaxis=dict(autorange="reversed"), xaxis=dict(title="probability", range=[0, 1]),
                      title=plot_text(f"step {step.get('index')}: chose {step.get('token_text')!r} (dark blue)"),
                      legend=dict(orientation="h", y=-0.15))
    return fig


def prob_entropy_figure(steps: list[dict], cursor: int) -> go.Figure:
    x = [s["index"] for s in steps]
    fig = go.Figure()
    fig.add_scatter(x=x, y=[s.get("prob") for s in steps], name="p(chosen)", mode="lines+markers")
    fig.add_scatter(x=x, y=[s.get("entropy") for s in steps], name="entropy (nats)", mode="lines", yaxis="y2")
    fig.add_vline(x=cursor, line_dash="dot", line_color="#000")
    fig.update_layout(height=260, margin=dict(l=10, r=10, t=30, b=10), title="Confidence over the generation",
                      xaxis_title="step", yaxis=dict(title="p", range=[0, 1.05]),
                      yaxis2=dict(title="entropy", overlaying="y", side="right", showgrid=False),
                      legend=dict(orientation="h", y=-0.25))
    return fig


def perplexity(steps: list[dict]) -> float | None:
    ps = [s.get("prob") for s in steps if s.get("prob")]
    if not ps:
        return None
    return math.exp(-sum(math.log(max(p, 1e-12)) for p in ps) / len(ps))
