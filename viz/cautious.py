"""Cautious next-token prediction figures: the trials of one branching step (each trial's perplexity, the kept
one marked), the entropy that set the number of trials over the run, and the text with the branching steps
marked."""
from __future__ import annotations

import plotly.graph_objects as go

from viz import layout as L
from viz import legend
from viz import window as W
from viz.safe import html_text, plot_text

MAX_TRIAL_CHARS = 70


def _cut(text: str, n: int = MAX_TRIAL_CHARS) -> str:
    return text if len(text) <= n else text[: n - 1] + "…"


def summary(steps: list[dict], upto: int) -> dict:
    seen = steps[: upto + 1]
    br = [s for s in seen if s.get("branched")]
    return {"branching": len(br), "trials": sum(s.get("n_trials", 0) for s in br),
            "trial_tokens": sum(len(t["ids"]) for s in br for t in s.get("trials", [])),
            "changed": sum(1 for s in br if "changed" in (s.get("events") or []))}


def trial_rows(step: dict) -> list[dict]:
    """The step's trials, lowest perplexity first (the table under the figure)."""
    out = []
    for i, t in enumerate(step.get("trials", [])):
        out.append({"trial": i, "kept": i == step.get("chosen"), "perplexity": round(t["ppl"], 3),
                    "tokens": len(t["ids"]), "stopped at": t["stop"], "text": t.get("text", "")})
    return sorted(out, key=lambda r: (r["perplexity"], r["trial"]))


def trials_figure(step: dict) -> go.Figure:
    """One bar per trial: its perplexity (lower is kept); the kept trial in the search colour."""
    rows = trial_rows(step)
    labels = [plot_text(f"#{r['trial']} {_cut(repr(r['text'])[1:-1])}") for r in rows]
    fig = go.Figure()
    fig.add_bar(y=labels, x=[r["perplexity"] for r in rows], orientation="h", name="perplexity",
                marker_color=[legend.CAD if r["kept"] else legend.UNVERIFIED for r in rows],
                text=[r["stopped at"] for r in rows], textposition="auto", hovertemplate="%{y}<br>ppl %{x:.3f}<br>"
                "stopped at %{text}<extra></extra>")
    fig.update_layout(height=110 + 30 * max(1, len(rows)), margin=dict(l=10, r=10, t=50, b=10),
                      yaxis=dict(autorange="reversed"), xaxis=dict(title="perplexity of the trial (lowest is kept)"),
                      showlegend=False)
    h, n = step.get("entropy", 0.0), step.get("n_trials", 1)
    if step.get("branched"):
        title, sub = f"Step {step.get('index')}: entropy {h:.2f} nats → {n} trials", "green: the trial kept"
    else:
        title, sub = f"Step {step.get('index')}: entropy {h:.2f} nats → one token", "below entropy_low: no trials"
    L.title(fig, plot_text(title), sub)
    L.themed(fig)
    return fig


def entropy_figure(steps: list[dict], cursor: int, low: float | None = None, high: float | None = None) -> go.Figure:
    """Entropy at every step, the two thresholds of the trial schedule, and the branching steps sized by their
    number of trials."""
    x = [s["index"] for s in steps]
    ex, ey = W.line_points(x, [s.get("entropy") for s in steps], keep=cursor)
    fig = go.Figure()
    fig.add_scatter(x=ex, y=ey, name="entropy (nats)", mode="lines", line_color=L.NEUTRAL)
    br = [s for s in steps if s.get("branched")][: W.MAX_POINTS]
    fig.add_scatter(x=[s["index"] for s in br], y=[s.get("entropy") for s in br], mode="markers",
                    name="branching step (size: trials)", text=[f"{s.get('n_trials')} trials" for s in br],
                    marker=dict(color=legend.CAD, size=[6 + min(30, 2 * s.get("n_trials", 1)) for s in br]),
                    hovertemplate="step %{x}: %{y:.2f} nats, %{text}<extra></extra>")
    for v, name in ((low, "entropy_low"), (high, "entropy_high")):
        if isinstance(v, (int, float)):
            fig.add_hline(y=v, line_dash="dash", line_color=L.NEUTRAL, annotation_text=name,
                          annotation_position="top left")
    fig.add_vline(x=cursor, line_dash="dot", line_color=L.NEUTRAL)
    fig.update_layout(height=280, margin=dict(l=10, r=10, t=30, b=10), xaxis_title="step",
                      yaxis=dict(title="nats", rangemode="tozero"))
    L.title(fig, "Uncertainty sets the number of trials", legend_above=True)
    L.legend_above(fig)
    L.themed(fig)
    return fig


def stream_html(steps: list[dict], upto: int, max_tokens: int = W.MAX_TOKENS) -> str:
    """The committed text up to steps[upto], one span per step: a branching step's trial on a green ground."""
    first = W.stream_start(steps, upto, lambda s: len(s.get("new_ids", [])) or 1, max_tokens)
    spans = [W.earlier_marker(first)]
    for i in range(first, upto + 1):
        s = steps[i]
        colour = legend.CAD if s.get("branched") else legend.UNVERIFIED
        tip = f"step {i}: entropy {s.get('entropy', 0):.2f} nats"
        if s.get("branched"):
            tip += f", {s.get('n_trials')} trials, kept #{s.get('chosen')}"
        border = "2px solid currentColor" if i == upto else "1px solid transparent"
        ground = f"{colour}33" if s.get("branched") else "transparent"
        spans.append(f'<span title="{html_text(tip)}" style="background:{ground};border-bottom:3px solid {colour};'
                     f'outline:{border};padding:1px 0;margin:0 1px">'
                     f'{html_text(s.get("new_text", ""), newline="↵<br>")}</span>')
    return f'<div style="font-family:monospace;line-height:1.9;font-size:0.95em">{"".join(spans)}</div>'
