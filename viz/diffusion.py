"""Diffusion view figures, pure functions of step records (no torch, no streamlit).

A diffusion step record (engine/methods/diffusion.py) has, per generated position, `state`
("mask" / "committed" / "new"), `tokens` and `texts` (the committed token, or the ghost
prediction under a mask), `conf` (probability of the prediction, where it was masked) and `score`
(the rule's score, for candidates of the current block), plus `block_range`, `threshold`, `nfe`.
"""
from __future__ import annotations

import plotly.graph_objects as go

from viz import legend
from viz.safe import html_text, plot_text

STATE_COLOURS = {"mask": legend.MASK, "committed": legend.COMMITTED_EARLIER, "new": legend.COMMITTED_NOW}
GHOST_TEXT = "#B0B0B0"


def _short(text: str, n: int = 6) -> str:
    """A cell label: spaces as ·, newlines as ↵, cut to n characters, escaped for plotly."""
    t = (text or "").replace("\n", "↵").replace(" ", "·")
    return plot_text(t if len(t) <= n else t[: n - 1] + "…")


def grid_legend() -> dict[str, str]:
    return {"[MASK] (ghost prediction in light type)": legend.MASK, "committed earlier": legend.COMMITTED_EARLIER,
            "committed this step (conf ≥ 0.7)": legend.COMMITTED_NOW, "this step, conf < 0.7": legend.CONF_MID,
            "this step, conf < 0.3": legend.CONF_LOW}


def _cell_colour(state: str, conf, graded: bool) -> str:
    if state == "new" and graded and conf is not None:
        return legend.confidence_colour(conf)
    return STATE_COLOURS[state]


def denoising_grid(steps: list[dict], upto: int, graded: bool = True, max_rows: int = 64) -> go.Figure:
    """Step x position grid: each cell is the position's token after that step (committed) or the
    ghost prediction under a mask in lighter type; the current block of each row is outlined
    (thick for the current step). Shows at most the last `max_rows` steps up to `upto`."""
    upto = max(0, min(upto, len(steps) - 1))
    first = max(0, upto - max_rows + 1)
    rows = steps[first: upto + 1]
    n = len(rows[0]["state"]) if rows else 0
    colours = sorted(set(STATE_COLOURS.values()) | {legend.CONF_LOW, legend.CONF_MID, legend.COMMITTED_NOW})
    code = {c: i for i, c in enumerate(colours)}
    scale = []
    for i, c in enumerate(colours):
        lo, hi = i / len(colours), (i + 1) / len(colours)
        scale += [[lo, c], [hi, c]]
    fig = go.Figure()
    z, text, hover = [], [], []
    ghost_x, ghost_y, ghost_t = [], [], []
    for s in rows:
        zr, tr, hr = [], [], []
        for j in range(n):
            st, conf, sc = s["state"][j], s["conf"][j], s["score"][j]
            zr.append(code[_cell_colour(st, conf, graded)] + 0.5)
            label = _short(s["texts"][j])
            tip = f"step {s['index']} · position {j}<br>{st}: {plot_text(repr(s['texts'][j]))}"
            if conf is not None:
                tip += f"<br>confidence {conf:.3f}"
            if sc is not None:
                tip += f"<br>rule score {sc:.3g}"
            hr.append(tip)
            if st == "mask":
                tr.append("")
                ghost_x.append(j)
                ghost_y.append(s["index"])
                ghost_t.append(label)
            else:
                tr.append(label)
        z.append(zr)
        text.append(tr)
        hover.append(hr)
    ys = [s["index"] for s in rows]
    fig.add_trace(go.Heatmap(z=z, x=list(range(n)), y=ys, text=text, texttemplate="%{text}",
                             textfont={"size": 9, "color": "#111111"}, customdata=hover,
                             hovertemplate="%{customdata}<extra></extra>", colorscale=scale, zmin=0,
                             zmax=len(colours), showscale=False, xgap=1, ygap=1))
    fig.add_trace(go.Scatter(x=ghost_x, y=ghost_y, mode="text", text=ghost_t,
                             textfont={"size": 8, "color": GHOST_TEXT}, hoverinfo="skip", showlegend=False))
    for s in rows:  # current block of each row
        lo, hi = s["block_range"]
        cur = s["index"] == steps[upto]["index"]
        fig.add_shape(type="rect", x0=lo - 0.5, x1=hi - 0.5, y0=s["index"] - 0.5, y1=s["index"] + 0.5,
                      line={"color": "#000000" if cur else "#888888", "width": 3 if cur else 1})
    fig.update_yaxes(autorange="reversed", title="step", dtick=max(1, len(rows) // 16))
    fig.update_xaxes(title="generated position", dtick=max(1, n // 16), side="top")
    fig.update_layout(height=max(260, 18 * len(rows) + 90), margin={"l": 50, "r": 10, "t": 40, "b": 10},
                      plot_bgcolor="#FFFFFF")
    return fig


def confidence_figure(step: dict) -> go.Figure:
    """Confidence of every position still masked before this step, the threshold line, and which
    were committed (green) or left masked (grey); candidates outside the block are faint."""
    xs, ys, cols, tips = [], [], [], []
    lo, hi = step["block_range"]
    for j, (st, conf) in enumerate(zip(step["state"], step["conf"])):
        if st not in ("mask", "new") or conf is None:
            continue
        xs.append(j)
        ys.append(conf)
        if st == "new":
            cols.append(legend.COMMITTED_NOW)
        elif lo <= j < hi:
            cols.append(legend.MASK)
        else:
            cols.append("#CCCCCC")
        tips.append(f"position {j}: {plot_text(repr(step['texts'][j]))} p={conf:.3f}"
                    + (f"<br>rule score {step['score'][j]:.3g}" if step["score"][j] is not None else ""))
    fig = go.Figure(go.Bar(x=xs, y=ys, marker_color=cols, customdata=tips, hovertemplate="%{customdata}<extra></extra>",
                           showlegend=False))
    if step.get("threshold") is not None and 0 <= step["threshold"] <= 1:
        fig.add_hline(y=step["threshold"], line_dash="dash", line_color="#D62728",
                      annotation_text=f"threshold {step['threshold']:g}")
    fig.add_vrect(x0=lo - 0.5, x1=hi - 0.5, line_width=1, line_color="#000000", fillcolor="rgba(0,0,0,0)")
    fig.update_layout(title=f"Step {step['index']}: confidence of the predictions under masks "
                            f"(green = committed, dark = remasked, faint = outside the block)",
                      yaxis={"range": [0, 1.02], "title": "confidence"}, xaxis={"title": "generated position"},
                      height=300, margin={"l": 50, "r": 10, "t": 50, "b": 40})
    return fig


def tokens_per_step_figure(steps: list[dict], upto: int) -> go.Figure:
    """Tokens committed per step (bars) and NFE so far (line)."""
    rows = steps[: upto + 1]
    xs = [s["index"] for s in rows]
    fig = go.Figure()
    fig.add_trace(go.Bar(x=xs, y=[len(s["new_ids"]) for s in rows], name="tokens committed",
                         marker_color=legend.COMMITTED_NOW))
    fig.add_trace(go.Scatter(x=xs, y=[s.get("nfe") for s in rows], name="NFE so far", yaxis="y2",
                             mode="lines+markers", line={"color": legend.COMMITTED_EARLIER}))
    fig.update_layout(title="Tokens committed per step and forward passes (NFE)", height=280,
                      xaxis={"title": "step"}, yaxis={"title": "tokens"},
                      yaxis2={"title": "NFE", "overlaying": "y", "side": "right"},
                      legend={"orientation": "h", "y": -0.3}, margin={"l": 50, "r": 50, "t": 40, "b": 40})
    return fig


def text_html(step: dict, mask_glyph: str = "▒") -> str:
    """The answer after a step: committed text, masks as dark boxes with the ghost in light type."""
    parts = []
    for st, t, conf in zip(step["state"], step["texts"], step["conf"]):
        esc = html_text(t, newline="↵<br>")
        if st == "mask":
            parts.append(f'<span style="background:{legend.MASK};color:{GHOST_TEXT};border-radius:2px" '
                         f'title="ghost prediction, p={conf if conf is not None else 0:.2f}">{esc or mask_glyph}</span>')
        else:
            bg = legend.COMMITTED_NOW if st == "new" else legend.COMMITTED_EARLIER
            parts.append(f'<span style="background:{bg}55">{esc}</span>')
    return f'<div style="font-family:monospace;line-height:1.9;font-size:0.95em">{"".join(parts)}</div>'


def summary(steps: list[dict], upto: int | None = None) -> dict:
    """Counts a reader compares between rules: steps, NFE, tokens committed, tokens per step."""
    rows = steps if upto is None else steps[: upto + 1]
    if not rows:
        return {"steps": 0, "NFE": 0, "tokens": 0, "tokens/step": 0.0}
    tokens = sum(len(s["new_ids"]) for s in rows)
    return {"steps": len(rows), "NFE": rows[-1].get("nfe", len(rows)), "tokens": tokens,
            "tokens/step": round(tokens / len(rows), 2)}
