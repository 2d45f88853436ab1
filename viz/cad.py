"""Context-aware decoding figures: one step's three distributions (with the context, without it, the contrast
the decoder samples from) and, over the run, how far the context moved the model and where it changed the
choice."""
from __future__ import annotations

import plotly.graph_objects as go

from viz import layout as L
from viz import legend
from viz import window as W
from viz.safe import plot_text


def _label(r: dict) -> str:
    return plot_text(f"{repr(r['text'])[1:-1] or '∅'}  #{r['id']}")


def step_figure(step: dict) -> go.Figure:
    """Bars per token: p with the context, p without it, and the contrast; the chosen token marked."""
    b = step.get("cad") or {}
    rows = sorted(b.get("rows", []), key=lambda r: -r["p_cad"])
    labels = [_label(r) for r in rows]
    chosen = step.get("token_id")
    fig = go.Figure()
    fig.add_bar(y=labels, x=[r["p_with"] for r in rows], orientation="h", name="with the context",
                marker_color=legend.WITH_CONTEXT)
    fig.add_bar(y=labels, x=[r["p_without"] for r in rows], orientation="h", name="without it",
                marker_color=legend.WITHOUT_CONTEXT)
    fig.add_bar(y=labels, x=[r["p_cad"] for r in rows], orientation="h", name="context-aware (chosen from)",
                marker_color=legend.CAD, marker_line_width=[3 if r["id"] == chosen else 0 for r in rows],
                marker_line_color="#000000")
    fig.update_layout(barmode="group", height=110 + 36 * len(rows), margin=dict(l=10, r=10, t=40, b=10),
                      yaxis=dict(autorange="reversed"), xaxis=dict(title="probability", range=[0, 1]))
    text = repr(step.get("token_text", "?"))
    sub = f"alpha {b.get('alpha', 0):g}; outlined: the chosen token"
    if b.get("top_cad") is not None and b.get("top_cad") != b.get("top_with"):
        sub += "; the contrast's top token differs from the model's with the context"
    L.title(fig, plot_text(f"Step {step.get('index')}: chose {text}"), sub)
    L.legend_below(fig)
    L.themed(fig)
    return fig


def run_figure(steps: list[dict], cursor: int) -> go.Figure:
    """Per step: KL(with || without) (how much the context moved the prediction) and the steps where the
    contrast's choice differs from the model's with the context."""
    x = [s["index"] for s in steps]
    kx, ky = W.line_points(x, [(s.get("cad") or {}).get("kl") for s in steps], keep=cursor)
    fig = go.Figure()
    fig.add_scatter(x=kx, y=ky, name="KL(with ‖ without) nats", mode="lines", line_color=legend.WITH_CONTEXT)
    ch = [s for s in steps if "changed" in (s.get("events") or [])][: W.MAX_POINTS]
    fig.add_scatter(x=[s["index"] for s in ch], y=[(s.get("cad") or {}).get("kl") for s in ch], mode="markers",
                    name="choice changed by the contrast", marker=dict(color=legend.CAD, size=10, symbol="diamond"),
                    text=[plot_text(repr(s.get("token_text", ""))) for s in ch], hoverinfo="x+text")
    fig.add_vline(x=cursor, line_dash="dot", line_color=L.NEUTRAL)
    fig.update_layout(height=260, margin=dict(l=10, r=10, t=30, b=10), xaxis_title="step",
                      yaxis=dict(title="nats", rangemode="tozero"))
    L.title(fig, "Where the context mattered", legend_above=True)
    L.legend_above(fig)
    L.themed(fig)
    return fig


def changed_count(steps: list[dict], upto: int) -> int:
    return sum(1 for s in steps[: upto + 1] if "changed" in (s.get("events") or []))
