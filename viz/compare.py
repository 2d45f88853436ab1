"""Compare view figures: several runs on one prompt, aligned by target forwards and by compute time."""
from __future__ import annotations

import plotly.graph_objects as go

from viz import layout as L
from viz import window as W
from viz.safe import html_text, plot_text

PALETTE = ["#1F77B4", "#FF7F0E", "#2CA02C", "#9467BD", "#8C564B", "#E377C2"]


def _curve(steps: list[dict], x_key: str):
    xs, ys = [0], [0]
    for s in steps:
        t = s.get("totals") or {}
        if x_key in t:
            xs.append(t[x_key])
            ys.append(t.get("tokens", 0))
    return xs, ys


def tokens_vs(runs: dict[str, list[dict]], x_key: str, title: str, x_title: str) -> go.Figure:
    """Tokens committed against target forwards (NFE) or compute seconds, one line per run (at most
    window.MAX_POINTS points each)."""
    fig = go.Figure()
    mx = 1
    for i, (name, steps) in enumerate(runs.items()):
        xs, ys = _curve(steps, x_key)
        mx = max(mx, max(xs))
        xs, ys = W.line_points(xs, ys)
        fig.add_scatter(x=xs, y=ys, mode="lines+markers", name=plot_text(name), line=dict(color=PALETTE[i % len(PALETTE)]),
                        line_shape="hv", marker=dict(size=4))
    if x_key == "target_forwards":
        fig.add_scatter(x=[0, mx], y=[0, mx], mode="lines", name="1 token / forward",
                        line=dict(color="#AAAAAA", dash="dot"))
    fig.update_layout(xaxis_title=x_title, yaxis_title="tokens committed", height=340,
                      margin=dict(l=10, r=10, t=40, b=10))
    L.title(fig, title)
    L.legend_below(fig, rows=2)
    L.themed(fig)
    return fig


def diff_html(ref_texts: list[str], out_texts: list[str]) -> str:
    """Tokens of a run against the reference: equal tokens plain, the first divergence boxed, the rest red."""
    div = None
    for i, (a, b) in enumerate(zip(ref_texts, out_texts)):
        if a != b:
            div = i
            break
    if div is None and len(ref_texts) != len(out_texts):
        div = min(len(ref_texts), len(out_texts))
    spans = []
    for i, t in enumerate(out_texts):
        esc = html_text(t, newline="↵")
        if div is not None and i == div:
            spans.append(f'<span title="first divergence at token {i}: reference has '
                         f'{html_text(repr(ref_texts[i]) if i < len(ref_texts) else "end")}" '
                         f'style="outline:2px solid #D62728;background:#D6272833">{esc}</span>')
        elif div is not None and i > div:
            spans.append(f'<span style="background:#D627281A">{esc}</span>')
        else:
            spans.append(f"<span>{esc}</span>")
    note = ("identical to the reference" if div is None else f"diverges at token {div}")
    return (f'<div style="font-family:monospace;font-size:0.9em;line-height:1.7">{"".join(spans)}</div>'
            f'<div style="font-size:0.8em;color:#888">{note}</div>')
