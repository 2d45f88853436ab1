"""Diffusion view figures, pure functions of step records (no torch, no streamlit).

A diffusion step record (engine/methods/diffusion.py) has, per generated position, `state`
("mask" / "committed" / "new"), `tokens` and `texts` (the committed token, or the ghost
prediction under a mask), `conf` (probability of the prediction, where it was masked) and `score`
(the rule's score, for candidates of the current block), plus `block_range`, `threshold`, `nfe`.
"""
from __future__ import annotations

import numpy as np
import plotly.graph_objects as go

from viz import layout as L
from viz import legend
from viz import window as W
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


# a binned cell shows its most telling position: one committed this step, else one still masked
_BIN_PRIORITY = {"new": 0, "mask": 1, "committed": 2}


def _grid_colours() -> tuple[dict[str, int], list]:
    colours = sorted(set(STATE_COLOURS.values()) | {legend.CONF_LOW, legend.CONF_MID, legend.COMMITTED_NOW})
    scale = []
    for i, c in enumerate(colours):
        lo, hi = i / len(colours), (i + 1) / len(colours)
        scale += [[lo, c], [hi, c]]
    return {c: i for i, c in enumerate(colours)}, scale


def _cell_tip(s: dict, j: int, shown: str) -> str:
    st, conf, sc = s["state"][j], s["conf"][j], s["score"][j]
    tip = f"step {s['index']} · position {j}<br>{st}: {shown}"
    if conf is not None:
        tip += f"<br>confidence {conf:.3f}"
    if sc is not None:
        tip += f"<br>rule score {sc:.3g}"
    return tip


def _bin_representative(s: dict, lo: int, hi: int) -> int:
    """The position of [lo, hi) a binned cell is coloured by (the lowest-confidence one among the most
    telling state)."""
    def telling(j):
        conf = s["conf"][j]
        return _BIN_PRIORITY[s["state"][j]], 1.0 if conf is None else conf
    return min(range(lo, hi), key=telling)


def _block_outlines(rows: list[dict], cursor_index: int) -> list[dict]:
    """The current block of each row as rectangles (thick for the cursor's step), built in one go: adding
    shapes one by one revalidates every shape so far."""
    out = []
    for s in rows:
        lo, hi = s["block_range"]
        cur = s["index"] == cursor_index
        out.append(dict(type="rect", x0=lo - 0.5, x1=hi - 0.5, y0=s["index"] - 0.5, y1=s["index"] + 0.5,
                        line={"color": "#000000" if cur else "#888888", "width": 3 if cur else 1}))
    return out


def denoising_grid(steps: list[dict], upto: int, graded: bool = True, max_rows: int = W.MAX_ROWS,
                   max_columns: int = W.MAX_COLUMNS, label_rows: int | None = None) -> go.Figure:
    """Step x position grid: each cell is the position's token after that step (committed) or the
    ghost prediction under a mask in lighter type; the current block of each row is outlined
    (thick for the current step). Shows at most the last `max_rows` steps up to `upto`; beyond
    max_columns positions, a cell is a bin of positions coloured by its most telling one (committed this
    step, else still masked), without labels. label_rows: only the last label_rows rows carry their tokens
    as text (the others colour and hover only), for a live view's redraw: each labelled cell is a text node
    the browser lays out again (a fully labelled 64 x 64 grid: ~1.4 s of a headless chromium's main thread
    per redraw on a 2-core machine; see benchmarks/results_ui.md)."""
    upto = max(0, min(upto, len(steps) - 1))
    first = W.first_row(upto, max_rows)
    rows = steps[first: upto + 1]
    n = len(rows[0]["state"]) if rows else 0
    k = W.bin_size(n, max_columns)
    code, scale = _grid_colours()
    labelled = k == 1 and W.hover_per_cell(len(rows) * n)
    shown: dict[str, tuple[str, str]] = {}  # token text -> (cell label, hover text): rows repeat tokens
    size, chars = L.grid_text(n if k == 1 else 0)
    fig = go.Figure()
    z, text, hover = [], [], []
    ghost_x, ghost_y, ghost_t = [], [], []
    plain_before = len(rows) - label_rows if label_rows is not None else 0   # rows without text labels
    for r_i, s in enumerate(rows):
        zr, tr, hr = [], [], []
        plain = r_i < plain_before
        for lo in range(0, n, k):
            j = lo if k == 1 else _bin_representative(s, lo, min(n, lo + k))
            st, conf = s["state"][j], s["conf"][j]
            zr.append(code[_cell_colour(st, conf, graded)] + 0.5)
            if not labelled:
                continue
            t = s["texts"][j]
            if t not in shown:
                shown[t] = (_short(t, chars), plot_text(repr(t)))
            label, quoted = shown[t]
            hr.append(_cell_tip(s, j, quoted))
            tr.append("" if plain or st == "mask" else label)
            if st == "mask" and not plain:
                ghost_x.append(j)
                ghost_y.append(s["index"])
                ghost_t.append(label)
        z.append(zr)
        text.append(tr)
        hover.append(hr)
    ys = [s["index"] for s in rows]
    if labelled:
        cell_text = dict(text=np.array(text, dtype=str), texttemplate="%{text}",
                         textfont={"size": size, "color": "#111111"}, customdata=np.array(hover, dtype=str),
                         hovertemplate="%{customdata}<extra></extra>")
    else:
        cell_text = dict(hovertemplate="step %{y} · position " + ("≈ " if k > 1 else "") + "%{x:.0f}<extra></extra>")
    fig.add_trace(go.Heatmap(z=np.array(z, dtype=float), x=W.bin_centres(n, k), y=ys, colorscale=scale, zmin=0,
                             zmax=len(code), showscale=False, xgap=1 if k == 1 else 0, ygap=1, **cell_text))
    fig.add_trace(go.Scatter(x=ghost_x, y=ghost_y, mode="text", text=ghost_t,
                             textfont={"size": size - 1, "color": GHOST_TEXT}, hoverinfo="skip", showlegend=False))
    fig.update_layout(shapes=_block_outlines(rows, steps[upto]["index"]) if rows else [])
    fig.update_yaxes(autorange="reversed", title="step", dtick=max(1, len(rows) // 16))
    fig.update_xaxes(title="generated position", dtick=max(1, n // 16), side="top")
    note = W.steps_note(first, upto, len(steps)) + (f" · positions binned by {k} (a cell shows its most telling "
                                                   "position: committed this step, else masked)" if k > 1 else "")
    if labelled and plain_before > 0:
        note += f" · tokens shown on the last {label_rows} steps while live (every step once it pauses or ends)"
    fig.update_layout(height=max(260, (size + 10) * len(rows) + 120), margin={"l": 50, "r": 10, "t": 80, "b": 10})
    L.title(fig, "Denoising: step × position", note.strip(" ·") or None, axis_on_top=True)
    L.themed(fig)
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
    fig = go.Figure(go.Bar(x=xs, y=ys, marker_color=cols, marker_line=dict(color=L.NEUTRAL, width=1),
                           customdata=tips, hovertemplate="%{customdata}<extra></extra>", showlegend=False))
    if step.get("threshold") is not None and 0 <= step["threshold"] <= 1:
        fig.add_hline(y=step["threshold"], line_dash="dash", line_color="#D62728",
                      annotation_text=f"threshold {step['threshold']:g}")
    fig.add_vrect(x0=lo - 0.5, x1=hi - 0.5, line_width=1, line_color=L.NEUTRAL, fillcolor="rgba(0,0,0,0)")
    fig.update_layout(yaxis={"range": [0, 1.02], "title": "confidence"}, xaxis={"title": "generated position"},
                      height=300, margin={"l": 50, "r": 10, "t": 50, "b": 40})
    L.title(fig, f"Step {step['index']}: confidence under the masks",
            "green: committed; dark: left masked; faint: outside the block (outlined)")
    L.themed(fig)
    return fig


def tokens_per_step_figure(steps: list[dict], upto: int) -> go.Figure:
    """Tokens committed per step (bars) and NFE so far (line), at most window.MAX_POINTS of each."""
    rows = steps[: upto + 1]
    xs = [s["index"] for s in rows]
    bx, by, k = W.bar_buckets(xs, [len(s["new_ids"]) for s in rows])
    lx, ly = W.line_points(xs, [s.get("nfe") for s in rows], keep=len(xs) - 1)
    fig = go.Figure()
    fig.add_trace(go.Bar(x=bx, y=by, name="tokens committed" if k == 1 else f"tokens committed ({k}-step mean)",
                         marker_color=legend.COMMITTED_NOW, width=k if k > 1 else None))
    fig.add_trace(go.Scatter(x=lx, y=ly, name="NFE so far", yaxis="y2",
                             mode="lines+markers" if len(lx) == len(xs) else "lines",
                             line={"color": legend.COMMITTED_EARLIER}))
    fig.update_layout(height=300, xaxis={"title": "step"}, yaxis={"title": "tokens"},
                      yaxis2=L.secondary_axis("NFE", rangemode="tozero"), margin={"l": 50, "r": 50, "t": 40, "b": 40})
    L.title(fig, "Tokens committed per step, and forward passes", legend_above=True)
    L.legend_above(fig)
    L.themed(fig)
    return fig


def _text_window(step: dict, max_tokens: int = W.MAX_TOKENS) -> tuple[int, int]:
    """The positions [start, end) the answer text shows: all of them up to max_tokens; else a window that
    ends with the current block (or a little after this step's newest commit, in a long block)."""
    n = len(step["state"])
    if n <= max_tokens:
        return 0, n
    lo, hi = step["block_range"]
    newest = max(step.get("new_positions") or [lo])
    end = min(n, max(max_tokens, min(hi, newest + 1 + max_tokens // 4)))
    return end - max_tokens, end


def text_html(step: dict, mask_glyph: str = "▒") -> str:
    """The answer after a step: committed text, masks as dark boxes with the ghost in light type (at most
    window.MAX_TOKENS positions, with markers for the positions left out)."""
    start, end = _text_window(step)
    parts = [W.earlier_marker(start, "positions")]
    for st, t, conf in zip(step["state"][start:end], step["texts"][start:end], step["conf"][start:end]):
        esc = html_text(t, newline="↵<br>")
        if st == "mask":
            parts.append(f'<span style="background:{legend.MASK};color:{GHOST_TEXT};border-radius:2px;'
                         f'box-shadow:0 0 0 1px {legend.SWATCH_HALO}" '
                         f'title="ghost prediction, p={conf if conf is not None else 0:.2f}">{esc or mask_glyph}</span>')
        else:
            bg = legend.COMMITTED_NOW if st == "new" else legend.COMMITTED_EARLIER
            parts.append(f'<span style="background:{bg}55">{esc}</span>')
    later = len(step["state"]) - end
    if later:
        parts.append(f'<span style="color:#888;font-style:italic;margin-left:6px">… {later:,} later positions</span>')
    return f'<div style="font-family:monospace;line-height:1.9;font-size:0.95em">{"".join(parts)}</div>'


def summary(steps: list[dict], upto: int | None = None) -> dict:
    """Counts a reader compares between rules: steps, NFE, tokens committed, tokens per step."""
    rows = steps if upto is None else steps[: upto + 1]
    if not rows:
        return {"steps": 0, "NFE": 0, "tokens": 0, "tokens/step": 0.0}
    tokens = sum(len(s["new_ids"]) for s in rows)
    return {"steps": len(rows), "NFE": rows[-1].get("nfe", len(rows)), "tokens": tokens,
            "tokens/step": round(tokens / len(rows), 2)}


SUMMARY_SUMS = W.sums(tokens=lambda s: len(s["new_ids"]))


def summary_at(trace, upto: int) -> dict:
    """summary(trace.steps, upto) from a running token count kept on the trace."""
    tokens = W.running_at(trace, "diffusion", SUMMARY_SUMS, upto)["tokens"]
    n = upto + 1
    return {"steps": n, "NFE": trace.steps[upto].get("nfe", n), "tokens": tokens, "tokens/step": round(tokens / n, 2)}
