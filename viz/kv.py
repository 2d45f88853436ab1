"""KV-cache eviction figures: pure functions of `kv` step records (no torch, no streamlit)."""
from __future__ import annotations

import math

import plotly.graph_objects as go
from plotly.subplots import make_subplots

from viz import legend
from viz.safe import html_text, plot_text

# eviction-map categories
ABSENT, EVICTED, KEPT, SINK, NEWEST = 0, 1, 2, 3, 4
CAT_NAMES = {ABSENT: "not yet seen", EVICTED: "evicted", KEPT: "kept", SINK: "attention sink (kept)",
             NEWEST: "newest (kept)"}
CAT_COLOURS = {ABSENT: legend.KV_ABSENT, EVICTED: legend.KV_EVICTED, KEPT: legend.KV_KEPT, SINK: legend.KV_SINK,
               NEWEST: legend.KV_NEWEST}
MASKED = "#BBBBBB"


def legend_items() -> dict[str, str]:
    return {CAT_NAMES[c]: CAT_COLOURS[c] for c in (KEPT, EVICTED, SINK, NEWEST, ABSENT)}


def watched_layers(steps: list[dict]) -> list[int]:
    if not steps:
        return []
    return sorted(int(k) for k in steps[0].get("layers", {}))


def n_kv_heads(steps: list[dict], layer: int) -> int:
    lay = steps[0].get("layers", {}).get(str(layer)) if steps else None
    return len(lay["kept"]) if lay else 0


def _kept_set(step: dict, layer: int, head) -> tuple[set[int], float | None]:
    lay = step["layers"][str(layer)]
    if head == "all":
        return set(), None
    return set(lay["kept"][int(head)]), None


def eviction_matrix(steps: list[dict], layer, head) -> tuple[list[list[float]], int]:
    """Rows = steps, columns = original positions. layer/head ints give categories; head='all' gives the
    fraction of the layer's KV heads keeping each position; layer='all' the fraction over every layer and head."""
    width = max(s["seq_len"] for s in steps)
    rows = []
    for s in steps:
        n = s["seq_len"]
        if layer == "all" or head == "all":
            if layer == "all":
                slots = s.get("slots") or 1
                frac = [c / slots for c in s.get("kept_count", [])]
            else:
                kept = s["layers"][str(layer)]["kept"]
                cnt = [0] * n
                for h in kept:
                    for p in h:
                        cnt[p] += 1
                frac = [c / len(kept) for c in cnt]
            rows.append(frac + [math.nan] * (width - len(frac)))
            continue
        kept = set(s["layers"][str(layer)]["kept"][int(head)])
        sinks = s.get("n_sink", 0)
        row = []
        for p in range(width):
            if p >= n:
                row.append(ABSENT)
            elif p not in kept:
                row.append(EVICTED)
            elif p == n - 1:
                row.append(NEWEST)
            elif p < sinks:
                row.append(SINK)
            else:
                row.append(KEPT)
        rows.append(row)
    return rows, width


def eviction_map_figure(steps: list[dict], layer, head, cursor: int | None = None, title: str | None = None):
    """Step x cached position map. Categorical colours for one head; a kept-fraction scale for summaries."""
    if not steps:
        return go.Figure()
    z, width = eviction_matrix(steps, layer, head)
    y = [s["index"] for s in steps]
    summary = layer == "all" or head == "all"
    if summary:
        hm = go.Heatmap(z=z, x=list(range(width)), y=y, zmin=0, zmax=1,
                        colorscale=[[0, legend.KV_EVICTED], [1, legend.KV_KEPT]],
                        colorbar=dict(title="kept by<br>fraction of heads"),
                        hovertemplate="step %{y}<br>position %{x}<br>kept by %{z:.0%} of heads<extra></extra>")
    else:
        # discrete colour scale over the 5 categories
        cs = []
        for c in range(5):
            cs += [[c / 5, CAT_COLOURS[c]], [(c + 1) / 5, CAT_COLOURS[c]]]
        text = [[CAT_NAMES[int(v)] for v in row] for row in z]
        hm = go.Heatmap(z=z, x=list(range(width)), y=y, zmin=-0.5, zmax=4.5, colorscale=cs, showscale=False,
                        text=text, hovertemplate="step %{y}<br>position %{x}<br>%{text}<extra></extra>")
    fig = go.Figure(hm)
    for c in (KEPT, EVICTED, SINK, NEWEST) if not summary else ():
        fig.add_trace(go.Scatter(x=[None], y=[None], mode="markers", name=CAT_NAMES[c],
                                 marker=dict(size=10, symbol="square", color=CAT_COLOURS[c])))
    if cursor is not None:
        fig.add_hline(y=steps[min(cursor, len(steps) - 1)]["index"], line=dict(color="black", width=1, dash="dot"))
    who = "all layers and heads" if layer == "all" else (f"layer {layer}, all heads" if head == "all"
                                                          else f"layer {layer}, KV head {head}")
    fig.update_layout(title=title or f"Eviction map ({who})", xaxis_title="original position",
                      yaxis_title="step", yaxis_autorange="reversed", height=360, margin=dict(t=50, b=40),
                      legend=dict(orientation="h", y=-0.25), plot_bgcolor="#FFFFFF")
    return fig


def query_group(steps: list[dict], layer) -> int:
    """Query heads per KV head of a watched layer (recorded with its attention rows; 1 if none was)."""
    for s in steps:
        g = s["layers"][str(layer)].get("group")
        if g:
            return g
    return 1


def attention_matrix(steps: list[dict], layer: int, qhead: int) -> tuple[list[list[float]], int]:
    """Rows = steps, columns = original positions: the new token's attention to each cached key
    (over the cache before this step's eviction); keys not in the cache are NaN (masked)."""
    width = max(s["seq_len"] for s in steps)
    g = query_group(steps, layer)
    rows = []
    for s in steps:
        lay = s["layers"][str(layer)]
        row = [math.nan] * width
        if "attn" in lay and "cand_pos" in lay and qhead < len(lay["attn"]):
            pos = lay["cand_pos"][qhead // g]
            for p, v in zip(pos, lay["attn"][qhead]):
                row[p] = v
        rows.append(row)
    return rows, width


def attention_heatmap_figure(steps: list[dict], layer: int, qhead: int, cursor: int | None = None, log: bool = True):
    if not steps:
        return go.Figure()
    z, width = attention_matrix(steps, layer, qhead)
    if log:
        z = [[(math.log10(v) if v > 0 else -8) if not math.isnan(v) else math.nan for v in row] for row in z]
    fig = go.Figure(go.Heatmap(
        z=z, x=list(range(width)), y=[s["index"] for s in steps], colorscale="Viridis",
        colorbar=dict(title="log10 p" if log else "p"),
        hovertemplate="step %{y}<br>key position %{x}<br>" + ("log10 p %{z:.2f}" if log else "p %{z:.3f}")
                      + "<extra></extra>"))
    # evicted this step: red x
    xs, ys = [], []
    kv_head = qhead // query_group(steps, layer)
    for s in steps:
        evicted = s["layers"][str(layer)].get("evicted") or []
        for p, _ in (evicted[kv_head] if kv_head < len(evicted) else []):
            xs.append(p)
            ys.append(s["index"])
    if xs:
        fig.add_trace(go.Scatter(x=xs, y=ys, mode="markers", name="evicted after this step",
                                 marker=dict(symbol="x", size=6, color=legend.KV_EVICTED)))
    if cursor is not None:
        fig.add_hline(y=steps[min(cursor, len(steps) - 1)]["index"], line=dict(color="white", width=1, dash="dot"))
    fig.update_layout(title=f"Attention of each new token (layer {layer}, query head {qhead}); grey = not in the cache",
                      xaxis_title="key position", yaxis_title="query step", yaxis_autorange="reversed",
                      height=360, margin=dict(t=50, b=40), plot_bgcolor=MASKED,
                      legend=dict(orientation="h", y=-0.25))
    return fig


def score_bars_figure(step: dict, layer: int, head: int):
    """This step's candidates (the cache before eviction) ranked by the policy's keep order, with the budget line."""
    lay = step["layers"][str(layer)]
    fig = go.Figure()
    if "scores" not in lay:
        fig.update_layout(title="No scores recorded for this step", height=320)
        return fig
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
        fig.add_vline(x=budget - 0.5, line=dict(color="black", dash="dash"),
                      annotation_text=f"budget {budget}", annotation_position="top")
    fig.update_layout(title=plot_text(f"{step.get('policy', '')} scores at step {step['index']} (layer {layer}, "
                                      f"KV head {head}); hatched = protected (sink / recent window)"),
                      xaxis_title="rank (kept first)", yaxis_title="score", height=320, margin=dict(t=50, b=40),
                      showlegend=False)
    return fig


def memory_figure(traces: dict[str, list[dict]]):
    """KV bytes kept per step for one or more runs, against the full cache."""
    fig = go.Figure()
    full_drawn = False
    for name, steps in traces.items():
        if not steps:
            continue
        x = [s["index"] for s in steps]
        fig.add_trace(go.Scatter(x=x, y=[s.get("kv_bytes", 0) / 1e6 for s in steps], mode="lines+markers",
                                 name=plot_text(f"{name} kept")))
        if not full_drawn:
            fig.add_trace(go.Scatter(x=x, y=[s.get("kv_bytes_full", 0) / 1e6 for s in steps], mode="lines",
                                     name="full cache", line=dict(color="#555555", dash="dash")))
            full_drawn = True
    fig.update_layout(title="KV memory over time", xaxis_title="step", yaxis_title="MB", height=300,
                      margin=dict(t=50, b=40))
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
        fig.add_trace(go.Scatter(x=x, y=[r["agreement"] for r in rr], mode="lines+markers", name=plot_text(p),
                                 legendgroup=p),
                      1, 1)
        fig.add_trace(go.Scatter(x=x, y=[r["ppl"] for r in rr], mode="lines+markers", name=plot_text(p), legendgroup=p,
                                 showlegend=False), 1, 2)
    if rows:
        fr = sorted({r["fraction"] for r in rows})
        full = {r["fraction"]: r["ppl_full"] for r in rows}
        fig.add_trace(go.Scatter(x=[f * 100 for f in fr], y=[full[f] for f in fr], mode="lines", name="full cache",
                                 line=dict(color="#555555", dash="dash")), 1, 2)
    fig.update_xaxes(title_text="budget (% of the text)")
    fig.update_yaxes(type="log", row=1, col=2)
    fig.update_layout(height=360, margin=dict(t=50, b=40))
    return fig


def agreement_figure(traces: dict[str, list[dict]]):
    """Running top-1 agreement with the full-cache shadow, per run."""
    fig = go.Figure()
    for name, steps in traces.items():
        pts = [(s["index"], s["quality"].get("agreement")) for s in steps if s.get("quality")]
        if pts:
            fig.add_trace(go.Scatter(x=[p[0] for p in pts], y=[p[1] for p in pts], mode="lines+markers",
                                     name=plot_text(name)))
    fig.update_layout(title="Running top-1 agreement with the full cache", xaxis_title="step",
                      yaxis_title="agreement", yaxis_range=[0, 1.05], height=300, margin=dict(t=50, b=40))
    return fig


def tokens_html(steps: list[dict], cursor: int | None = None) -> str:
    """The generated text; tokens where the policy's argmax differs from the full cache's are underlined red."""
    out = []
    for s in steps[: (cursor + 1) if cursor is not None else None]:
        t = html_text(s.get("new_text", ""), newline="↵<br>")
        q = s.get("quality")
        style = ""
        if q is not None and not q.get("agree", True):
            style = f"border-bottom:2px solid {legend.KV_EVICTED};"
            tip = html_text(f"full cache would say {q.get('full_argmax_text', '')}")
            t = f'<span title="{tip}" style="{style}">{t}</span>'
        out.append(t)
    return '<div style="font-family:monospace;line-height:1.6">' + "".join(out) + "</div>"
