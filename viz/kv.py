"""KV-cache eviction figures: pure functions of `kv` step records (no torch, no streamlit).

(~380 lines, one file on purpose: every figure reads the same kv step records through the same layer /
head helpers.)
"""
from __future__ import annotations

import math

import numpy as np
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from viz import layout as L
from viz import legend
from viz import window as W
from viz.layout import SEP
from viz.safe import html_text, plot_text

# eviction-map categories
ABSENT, EVICTED, KEPT, SINK, NEWEST = 0, 1, 2, 3, 4
CAT_NAMES = {ABSENT: "not yet seen", EVICTED: "evicted", KEPT: "kept", SINK: "attention sink (kept)",
             NEWEST: "newest (kept)"}
CAT_COLOURS = {ABSENT: legend.KV_ABSENT, EVICTED: legend.KV_EVICTED, KEPT: legend.KV_KEPT, SINK: legend.KV_SINK,
               NEWEST: legend.KV_NEWEST}
MASKED = "rgba(128,128,128,0.45)"   # not in the cache: mid grey on a light and a dark page


def legend_items() -> dict[str, str]:
    return {CAT_NAMES[c]: CAT_COLOURS[c] for c in (KEPT, EVICTED, SINK, NEWEST, ABSENT)}


def watched_layers(steps: list[dict]) -> list[int]:
    if not steps:
        return []
    return sorted(int(k) for k in steps[0].get("layers", {}))


def n_kv_heads(steps: list[dict], layer: int) -> int:
    lay = steps[0].get("layers", {}).get(str(layer)) if steps else None
    return len(lay["kept"]) if lay else 0


def _kept_fraction(step: dict, layer, head) -> list[float]:
    """Per position of the step's sequence: the fraction of slots keeping it (every layer and head for
    layer 'all', the layer's heads for head 'all', 0 / 1 for one head)."""
    n = step["seq_len"]
    if layer == "all":
        slots = step.get("slots") or 1
        return [c / slots for c in step.get("kept_count", [])]
    kept = step["layers"][str(layer)]["kept"]
    heads = kept if head == "all" else [kept[int(head)]]
    count = [0] * n
    for h in heads:
        for p in h:
            count[p] += 1
    return [c / len(heads) for c in count]


def _category_row(step: dict, layer, head, width: int) -> list[int]:
    """One head's category of every position: absent, evicted, kept, sink (kept) or newest (kept)."""
    n = step["seq_len"]
    row = [EVICTED] * n + [ABSENT] * (width - n)
    for p in step["layers"][str(layer)]["kept"][int(head)]:
        row[p] = KEPT
    for p in range(min(step.get("n_sink", 0), n)):
        if row[p] == KEPT:
            row[p] = SINK
    if row[n - 1] != EVICTED:
        row[n - 1] = NEWEST
    return row


def _binned(values: list[float], width: int, k: int) -> list[float]:
    """Means of `values` over bins of k positions, NaN-padded to the bins of `width` positions."""
    if k == 1:
        return values + [math.nan] * (width - len(values))
    out = [sum(values[i: i + k]) / len(values[i: i + k]) for i in range(0, len(values), k)]
    return out + [math.nan] * (math.ceil(width / k) - len(out))


def eviction_matrix(steps: list[dict], layer, head, bin_size: int = 1) -> tuple[list[list[float]], int]:
    """Rows = steps, columns = original positions. layer/head ints give categories; head='all' gives the
    fraction of the layer's KV heads keeping each position; layer='all' the fraction over every layer and head.
    With bin_size > 1 a column is a bin of positions and every view gives the kept fraction (its mean over
    the bin's positions seen so far)."""
    width = max(s["seq_len"] for s in steps)
    if bin_size == 1 and layer != "all" and head != "all":
        return [_category_row(s, layer, head, width) for s in steps], width
    return [_binned(_kept_fraction(s, layer, head), width, bin_size) for s in steps], width


def _grid_window(steps: list[dict], cursor: int | None, max_rows: int, max_columns: int):
    """The steps a step x position figure shows (at most max_rows, ending at the cursor), the positions'
    width and the bin size that fits them in max_columns columns."""
    cur = len(steps) - 1 if cursor is None else max(0, min(cursor, len(steps) - 1))
    first = W.first_row(cur, max_rows)
    rows = steps[first: cur + 1]
    width = max(s["seq_len"] for s in rows)
    return rows, first, cur, width, W.bin_size(width, max_columns)


def _window_note(first: int, cur: int, total: int, k: int, what: str) -> str:
    return W.steps_note(first, cur, total) + (f" · positions binned by {k}: {what}" if k > 1 else "")


CATEGORY_CODES = ", ".join(f"{c} {CAT_NAMES[c]}" for c in (EVICTED, KEPT, SINK, NEWEST, ABSENT))


def eviction_map_figure(steps: list[dict], layer, head, cursor: int | None = None, title: str | None = None,
                        max_rows: int = W.MAX_ROWS, max_columns: int = W.MAX_COLUMNS):
    """Step x cached position map of the last max_rows steps up to the cursor. Categorical colours for one
    head; a kept-fraction scale for summaries and when positions are binned (more than max_columns)."""
    if not steps:
        return go.Figure()
    rows, first, cur, width, k = _grid_window(steps, cursor, max_rows, max_columns)
    z, _ = eviction_matrix(rows, layer, head, bin_size=k)
    x = W.bin_centres(width, k)
    cells = np.array(z, dtype=float)  # plotly takes arrays without walking every cell
    y = [s["index"] for s in rows]
    summary = layer == "all" or head == "all"
    if summary or k > 1:
        what = "kept by<br>fraction of heads" if summary else "kept fraction<br>of the bin"
        hm = go.Heatmap(z=cells, x=x, y=y, zmin=0, zmax=1, colorscale=[[0, legend.KV_EVICTED], [1, legend.KV_KEPT]],
                        colorbar=dict(title=what + ("<br>(bin mean)" if summary and k > 1 else "")),
                        hovertemplate="step %{y}<br>position " + ("≈ " if k > 1 else "") + "%{x:.0f}<br>kept by "
                                      "%{z:.0%}" + (" of heads" if summary else " of the bin") + "<extra></extra>")
    else:
        # discrete colour scale over the 5 categories
        cs = []
        for c in range(5):
            cs += [[c / 5, CAT_COLOURS[c]], [(c + 1) / 5, CAT_COLOURS[c]]]
        if W.hover_per_cell(len(z) * width):
            hover = dict(text=np.array([[CAT_NAMES[v] for v in row] for row in z], dtype=str),
                         hovertemplate="step %{y}<br>position %{x}<br>%{text}<extra></extra>")
        else:  # no per-cell strings for a large map: the category's code, and the codes' names
            hover = dict(hovertemplate=f"step %{{y}}<br>position %{{x}}<br>%{{z}} ({CATEGORY_CODES})<extra></extra>")
        hm = go.Heatmap(z=cells, x=x, y=y, zmin=-0.5, zmax=4.5, colorscale=cs, showscale=False, **hover)
    fig = go.Figure(hm)
    for c in (KEPT, EVICTED, SINK, NEWEST) if not (summary or k > 1) else ():
        fig.add_trace(go.Scatter(x=[None], y=[None], mode="markers", name=CAT_NAMES[c],
                                 marker=dict(size=10, symbol="square", color=CAT_COLOURS[c])))
    if cursor is not None:
        fig.add_hline(y=steps[cur]["index"], line=dict(color="black", width=1, dash="dot"))
    who = "all layers and heads" if layer == "all" else (f"layer {layer}, all heads" if head == "all"
                                                          else f"layer {layer}, KV head {head}")
    note = _window_note(first, cur, len(steps), k, "colour = kept fraction")
    fig.update_layout(xaxis_title="original position", yaxis_title="step", yaxis_autorange="reversed", height=360,
                      margin=dict(t=50, b=40))
    L.title(fig, title or f"Eviction map ({who})", note.strip(" ·") or None)
    L.legend_below(fig)
    L.themed(fig)
    return fig


def query_group(steps: list[dict], layer) -> int:
    """Query heads per KV head of a watched layer (recorded with its attention rows; 1 if none was)."""
    for s in steps:
        g = s["layers"][str(layer)].get("group")
        if g:
            return g
    return 1


def attention_matrix(steps: list[dict], layer: int, qhead: int, bin_size: int = 1,
                     group: int | None = None) -> tuple[list[list[float]], int]:
    """Rows = steps, columns = original positions: the new token's attention to each cached key
    (over the cache before this step's eviction); keys not in the cache are NaN (masked). With bin_size > 1
    a column is a bin of positions holding the attention summed over its cached keys."""
    width = max(s["seq_len"] for s in steps)
    g = group or query_group(steps, layer)
    rows = []
    for s in steps:
        lay = s["layers"][str(layer)]
        row = [math.nan] * math.ceil(width / bin_size)
        if "attn" in lay and "cand_pos" in lay and qhead < len(lay["attn"]):
            pos = lay["cand_pos"][qhead // g]
            for p, v in zip(pos, lay["attn"][qhead]):
                b = p // bin_size
                row[b] = v if math.isnan(row[b]) else row[b] + v
        rows.append(row)
    return rows, width


def _evicted_marks(rows: list[dict], layer: int, kv_head: int, k: int) -> tuple[list, list]:
    """(x, y) of the entries evicted after each step shown: one mark per cell when positions are binned."""
    seen, xs, ys = set(), [], []
    for s in rows:
        evicted = s["layers"][str(layer)].get("evicted") or []
        for p, _ in (evicted[kv_head] if kv_head < len(evicted) else []):
            cell = (s["index"], p // k)
            if cell in seen:
                continue
            seen.add(cell)
            xs.append(p if k == 1 else (p // k) * k + (k - 1) / 2)
            ys.append(s["index"])
    return xs, ys


def attention_heatmap_figure(steps: list[dict], layer: int, qhead: int, cursor: int | None = None, log: bool = True,
                             max_rows: int = W.MAX_ROWS, max_columns: int = W.MAX_COLUMNS):
    """The new token's attention over the cached keys, for the last max_rows steps up to the cursor."""
    if not steps:
        return go.Figure()
    rows, first, cur, width, k = _grid_window(steps, cursor, max_rows, max_columns)
    g = query_group(steps, layer)
    z, _ = attention_matrix(rows, layer, qhead, bin_size=k, group=g)
    cells = np.array(z, dtype=float)
    if log:
        with np.errstate(divide="ignore"):
            cells = np.where(cells > 0, np.log10(cells), np.where(np.isnan(cells), np.nan, -8.0))
    value = ("log10 p %{z:.2f}" if log else "p %{z:.3f}") + (" (summed over the bin)" if k > 1 else "")
    fig = go.Figure(go.Heatmap(
        z=cells, x=W.bin_centres(width, k), y=[s["index"] for s in rows], colorscale="Viridis",
        colorbar=dict(title="log10 p" if log else "p"),
        hovertemplate="step %{y}<br>key position " + ("≈ " if k > 1 else "") + "%{x:.0f}<br>" + value
                      + "<extra></extra>"))
    xs, ys = _evicted_marks(rows, layer, qhead // g, k)
    if xs:
        fig.add_trace(go.Scatter(x=xs, y=ys, mode="markers", name="evicted after this step",
                                 marker=dict(symbol="x", size=6, color=legend.KV_EVICTED)))
    if cursor is not None:
        fig.add_hline(y=steps[cur]["index"], line=dict(color="white", width=1, dash="dot"))
    note = _window_note(first, cur, len(steps), k, "attention summed per bin")
    fig.update_layout(xaxis_title="key position", yaxis_title="query step", yaxis_autorange="reversed",
                      height=360, margin=dict(t=50, b=40))
    L.title(fig, f"Attention of each new token (layer {layer}, query head {qhead})",
            "grey: not in the cache" + (SEP + note.strip(" ·") if note else ""))
    L.legend_below(fig)
    L.themed(fig)
    fig.update_layout(plot_bgcolor=MASKED)   # a key not in the cache is a gap: grey
    return fig


def score_bars_figure(step: dict, layer: int, head: int):
    """This step's candidates (the cache before eviction) ranked by the policy's keep order, with the budget line."""
    lay = step["layers"][str(layer)]
    fig = go.Figure()
    if "scores" not in lay:
        fig.update_layout(height=320)
        L.title(fig, "No scores recorded for this step")
        return L.themed(fig)
    pos = lay["cand_pos"][head]
    sc = lay["scores"][head]
    prot = lay["protected"][head]
    kept = set(lay["kept"][head])
    sinks = step.get("n_sink", 0)
    newest = step["seq_len"] - 1
    order = sorted(range(len(pos)), key=lambda i: (-prot[i], -(sc[i] if sc[i] is not None else -1e30),
                                                   -pos[i] if prot[i] else 0))
    colours, labels, ys = [], [], []
    for i in order:
        p = pos[i]
        if p not in kept:
            c, lab = legend.KV_EVICTED, "evicted"
        elif p == newest:
            c, lab = legend.KV_NEWEST, "newest"
        elif p < sinks:
            c, lab = legend.KV_SINK, "sink"
        else:
            c, lab = legend.KV_KEPT, "kept"
        colours.append(c)
        labels.append(f"pos {p} · {lab}" + (" · protected" if prot[i] else ""))
        ys.append(sc[i] if sc[i] is not None else 0.0)
    fig.add_trace(go.Bar(x=list(range(len(order))), y=ys, marker_color=colours, text=labels,
                         marker_pattern_shape=["/" if prot[i] else "" for i in order],
                         hovertemplate="%{text}<br>score %{y:.4g}<extra></extra>", name="candidates"))
    budget = step.get("budget")
    if budget is not None and budget < len(pos):
        fig.add_vline(x=budget - 0.5, line=dict(color=L.NEUTRAL, dash="dash"),
                      annotation_text=f"budget {budget}", annotation_position="top")
    fig.update_layout(xaxis_title="rank (kept first)", yaxis_title="score", height=320, margin=dict(t=50, b=40),
                      showlegend=False)
    L.title(fig, plot_text(f"{step.get('policy', '')} scores at step {step['index']}"),
            f"layer {layer}, KV head {head}; hatched: protected (sink / recent window)")
    L.themed(fig)
    return fig


# one colour per KV policy, the same in every chart (Streamlit's own palette pairs a dark and a light shade of
# each hue, so 8 policies got 4 look-alike pairs); green and red stay kept / evicted
POLICY_COLOURS = {"full": L.NEUTRAL, "random": "#8C564B", "streaming_llm": "#1F77B4", "h2o": "#FF7F0E",
                  "snapkv": "#9467BD", "tova": "#17BECF", "l2norm": "#E377C2", "lazy_eviction": "#BCBD22"}
EXTRA_COLOURS = ["#7F7F7F", "#AEC7E8", "#FFBB78", "#C5B0D5", "#C49C94", "#F7B6D2", "#DBDB8D", "#9EDAE5"]


def policy_colour(name: str, i: int = 0) -> str:
    """The policy's colour, for a name such as "h2o", "h2o (left)" or "h2o kept"."""
    key = str(name).split(" ")[0]
    return POLICY_COLOURS.get(key) or EXTRA_COLOURS[i % len(EXTRA_COLOURS)]


def memory_figure(traces: dict[str, list[dict]]):
    """KV bytes kept per step for one or more runs, against the full cache (at most window.MAX_POINTS
    points per line)."""
    fig = go.Figure()
    full_drawn = False
    longest = drawn = 0
    for i, (name, steps) in enumerate(traces.items()):
        if not steps:
            continue
        x = [s["index"] for s in steps]
        kx, ky = W.line_points(x, [s.get("kv_bytes", 0) / 1e6 for s in steps])
        longest, drawn = max(longest, len(x)), max(drawn, len(kx))
        fig.add_trace(go.Scatter(x=kx, y=ky, mode="lines+markers" if len(kx) == len(x) else "lines",
                                 name=plot_text(f"{name} kept"), line=dict(color=policy_colour(name, i))))
        if not full_drawn:
            fx, fy = W.line_points(x, [s.get("kv_bytes_full", 0) / 1e6 for s in steps])
            fig.add_trace(go.Scatter(x=fx, y=fy, mode="lines", name="full cache",
                                     line=dict(color=L.NEUTRAL, dash="dash")))
            full_drawn = True
    fig.update_layout(xaxis_title="step", yaxis_title="MB", height=300, margin=dict(t=50, b=40))
    L.title(fig, "KV memory over time", W.downsampled_note(longest, drawn).strip(" ()") or None, legend_above=True)
    L.legend_above(fig)
    L.themed(fig)
    return fig


def quality_figure(rows: list[dict]):
    """rows: one per (policy, fraction) with agreement, ppl, ppl_full (engine.methods.kv.quality.quality_curve)."""
    fig = make_subplots(rows=1, cols=2, subplot_titles=("top-1 agreement with the full cache", "perplexity"))
    pols = []
    for r in rows:
        if r["policy"] not in pols:
            pols.append(r["policy"])
    for p in pols:
        rr = sorted((r for r in rows if r["policy"] == p), key=lambda r: r["fraction"])
        x = [r["fraction"] * 100 for r in rr]
        colour = dict(color=policy_colour(p, len(pols)))
        fig.add_trace(go.Scatter(x=x, y=[r["agreement"] for r in rr], mode="lines+markers", name=plot_text(p),
                                 legendgroup=p, line=colour, marker=colour),
                      1, 1)
        fig.add_trace(go.Scatter(x=x, y=[r["ppl"] for r in rr], mode="lines+markers", name=plot_text(p), legendgroup=p,
                                 showlegend=False, line=colour, marker=colour), 1, 2)
    if rows:
        fr = sorted({r["fraction"] for r in rows})
        full = {r["fraction"]: r["ppl_full"] for r in rows}
        fig.add_trace(go.Scatter(x=[f * 100 for f in fr], y=[full[f] for f in fr], mode="lines", name="full cache",
                                 line=dict(color=L.NEUTRAL, dash="dash")), 1, 2)
    fig.update_xaxes(title_text="budget (% of the text)")
    fig.update_yaxes(type="log", row=1, col=2)
    fig.update_layout(height=380, margin=dict(t=50, b=40))
    L.title(fig, "Each policy against the full cache, by budget")
    fig.update_layout(margin=dict(t=fig.layout.margin.t + 24))   # the two subplot titles, under the figure's own
    L.themed(fig)
    return fig


def agreement_figure(traces: dict[str, list[dict]]):
    """Running top-1 agreement with the full-cache shadow, per run (at most window.MAX_POINTS points)."""
    fig = go.Figure()
    longest = drawn = 0
    for i, (name, steps) in enumerate(traces.items()):
        pts = [(s["index"], s["quality"].get("agreement")) for s in steps if s.get("quality")]
        if pts:
            x, y = W.line_points([p[0] for p in pts], [p[1] for p in pts])
            longest, drawn = max(longest, len(pts)), max(drawn, len(x))
            fig.add_trace(go.Scatter(x=x, y=y, mode="lines+markers" if len(x) == len(pts) else "lines",
                                     name=plot_text(name), line=dict(color=policy_colour(name, i))))
    fig.update_layout(xaxis_title="step", yaxis_title="agreement", yaxis_range=[0, 1.05], height=300,
                      margin=dict(t=50, b=40))
    L.title(fig, "Top-1 agreement with the full cache", W.downsampled_note(longest, drawn).strip(" ()") or None,
            legend_above=True)
    L.legend_above(fig)
    L.themed(fig)
    return fig


def tokens_html(steps: list[dict], cursor: int | None = None, max_tokens: int = W.MAX_TOKENS) -> str:
    """The generated text (its last window.MAX_TOKENS tokens); tokens where the policy's argmax differs from
    the full cache's are underlined red."""
    upto = len(steps) - 1 if cursor is None else cursor
    first = W.stream_start(steps, upto, lambda s: 1, max_tokens)
    out = [W.earlier_marker(first)]
    for s in steps[first: upto + 1]:
        t = html_text(s.get("new_text", ""), newline="↵<br>")
        q = s.get("quality")
        if q is not None and not q.get("agree", True):
            tip = html_text(f"full cache would say {q.get('full_argmax_text', '')}")
            t = f'<span title="{tip}" style="border-bottom:2px solid {legend.KV_EVICTED};">{t}</span>'
        out.append(t)
    return '<div style="font-family:monospace;line-height:1.6">' + "".join(out) + "</div>"
