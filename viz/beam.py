"""Beam search figures, pure functions of step records (no torch, no streamlit).

A step record (kind "beam") holds the beams kept after the step (`beams`, best first per group), the
continuations considered and dropped (`pruned`), the hypotheses that ended at this step (`finished`, with their
length-normalised `norm_score` and whether they entered the n-best list, `kept`), and the n-best list so far
(`nbest`: references to finished hypotheses by step and slot). Every candidate names its `parent`: the slot of
the beam it extends in the previous step's `beams` (-1: the prompt, at step 0). A beam's text is read by
following parents back.
"""
from __future__ import annotations

import networkx as nx
import plotly.graph_objects as go

from viz import layout as L
from viz import legend
from viz import window as W
from viz.safe import plot_text

TREE_STEPS = 10          # steps drawn in the tree, ending at the cursor
PRUNED_PER_BEAM = 2      # grey leaves drawn per beam (the best of the pruned)
MAX_PRUNED_DRAWN = 40    # grey leaves drawn per step
TEXT_TOKENS = 200        # tokens of a beam's text shown (its last ones)

ON_PATH = legend.ACCEPTED                  # a beam whose line reaches the beams at the cursor
DEAD = "rgba(44,160,44,0.35)"              # a beam kept at its step whose line ended later
PRUNED = legend.UNVERIFIED                 # a continuation considered and dropped
IN_NBEST = legend.BONUS                    # a finished hypothesis in the n-best list at the cursor
DROPPED = legend.REJECTED                  # a finished hypothesis not (or no longer) in the n-best list
ROOT = "#555555"
LABELS = {"root": "prompt", "on_path": "beam (its line goes on)", "dead": "beam (its line ended)",
          "pruned": "pruned continuation", "nbest": "finished, in the n-best", "dropped": "finished, dropped"}
COLOURS = {"root": ROOT, "on_path": ON_PATH, "dead": DEAD, "pruned": PRUNED, "nbest": IN_NBEST, "dropped": DROPPED}


def _tok(text: str) -> str:
    return repr(str(text))[1:-1] or "∅"


def _fmt(x, digits: int = 3) -> str:
    return "-" if x is None else f"{x:.{digits}f}"


def legend_items() -> dict[str, str]:
    return {LABELS[k]: COLOURS[k] for k in ("on_path", "dead", "pruned", "nbest", "dropped")}


# ---- texts, by following parents back ---------------------------------------------------------------
def beam_tokens(steps: list[dict], step: int, slot: int, max_tokens: int = TEXT_TOKENS) -> tuple[list[str], bool]:
    """The token texts of the beam in `slot` after `step` (its last `max_tokens`), and whether earlier ones
    were left out."""
    out: list[str] = []
    s = step
    while s >= 0 and slot >= 0:
        beams = steps[s].get("beams", [])
        if slot >= len(beams) or len(out) >= max_tokens:
            break
        c = beams[slot]
        out.append(c.get("text", ""))
        slot = c["parent"]
        s -= 1
    return out[::-1], s >= 0 and slot >= 0


def _join(tokens: list[str], cut: bool) -> str:
    return ("… " if cut else "") + "".join(tokens)


def beam_text(steps: list[dict], step: int, slot: int) -> str:
    return _join(*beam_tokens(steps, step, slot))


def hypothesis_text(steps: list[dict], step: int, slot: int) -> str:
    """The text of the hypothesis that finished at `step` in its `finished` list's `slot`."""
    f = steps[step]["finished"][slot]
    toks, cut = beam_tokens(steps, step - 1, f["parent"], TEXT_TOKENS - 1) if step > 0 else ([], False)
    return _join(toks + [f.get("text", "")], cut)


# ---- tables -----------------------------------------------------------------------------------------
def beam_rows(steps: list[dict], cur: int) -> list[dict]:
    """The beams kept after the cursor's step, best first per group: their text and scores."""
    rows = []
    for i, b in enumerate(steps[cur].get("beams", [])):
        rows.append({"beam": i, "group": b.get("group", 0), "score": b["score"],
                     "last token": _tok(b.get("text", "")), "log p": b.get("logprob"),
                     "penalty": b.get("penalty"), "text": beam_text(steps, cur, i)})
    return rows


def nbest_rows(steps: list[dict], cur: int) -> list[dict]:
    """The n-best list at the cursor: finished hypotheses, best (length-normalised score) first."""
    rows = []
    for rank, r in enumerate(steps[cur].get("nbest", [])):
        f = steps[r["step"]]["finished"][r["slot"]]
        rows.append({"rank": rank + 1, "score": r.get("score", f.get("norm_score")), "sum of log p": f["score"],
                     "tokens": f.get("length", r["step"] + 1), "group": r.get("group", f.get("group", 0)),
                     "finished at step": r["step"], "ended by": "end of text" if f.get("eos") else "token budget",
                     "text": hypothesis_text(steps, r["step"], r["slot"])})
    return rows


def summary(steps: list[dict], cur: int) -> dict:
    s = steps[cur]
    nb = s.get("nbest") or []
    return {"beams": len(s.get("beams", [])), "groups": s.get("groups", 1),
            "finished": sum(len(x.get("finished", [])) for x in steps[: cur + 1]),
            "pruned": len(s.get("pruned", [])), "best_running": max((b["score"] for b in s.get("beams", [])),
                                                                   default=None),
            "best_finished": nb[0].get("score") if nb else None, "stop": s.get("stop")}


# ---- the tree -----------------------------------------------------------------------------------------
def _alive(steps: list[dict], first: int, cur: int) -> set[tuple[int, int]]:
    """(step, slot) of the beams whose line reaches the beams kept at the cursor (or the n-best there)."""
    alive = {(cur, i) for i in range(len(steps[cur].get("beams", [])))}
    for r in steps[cur].get("nbest", []):
        if r["step"] > 0 and r["step"] - 1 >= first - 1:
            alive.add((r["step"] - 1, steps[r["step"]]["finished"][r["slot"]]["parent"]))
    for s in range(cur, max(first, 1) - 1, -1):
        for (st, slot) in [a for a in alive if a[0] == s]:
            beams = steps[st].get("beams", [])
            if slot < len(beams):
                alive.add((s - 1, beams[slot]["parent"]))
    return alive


def _hover(c: dict, step: int, what: str) -> str:
    lines = [f"<b>{plot_text(_tok(c.get('text', '')))}</b>  #{c.get('token')}",
             f"step {step} · {what} · group {c.get('group', 0)}",
             f"score (sum of log p) = {_fmt(c.get('score'))} · log p = {_fmt(c.get('logprob'))}"]
    if c.get("penalty"):
        lines.append(f"diversity penalty = {_fmt(c['penalty'])}")
    if c.get("norm_score") is not None:
        lines.append(f"normalised score = {_fmt(c['norm_score'])} · {c.get('length', '?')} tokens")
    return "<br>".join(lines)


def tree_graph(steps: list[dict], cur: int, window: int = TREE_STEPS, per_beam: int = PRUNED_PER_BEAM) -> nx.DiGraph:
    """The tree of the last `window` steps up to the cursor: nodes ("b"|"p"|"f", step, j) and the prompt (or
    the beams before the window) as roots; node attributes layer, kind, label, hover, score."""
    first = W.first_row(cur, window)
    alive = _alive(steps, first, cur)
    nbest = {(r["step"], r["slot"]) for r in steps[cur].get("nbest", [])}
    g = nx.DiGraph()

    def parent_node(s: int, p: int):
        if s == 0:
            return ("root",)
        node = ("b", s - 1, p)
        if node not in g:   # a beam before the window: drawn as a root of its own
            c = steps[s - 1]["beams"][p]
            g.add_node(node, layer=s - first, kind="on_path" if (s - 1, p) in alive else "dead",
                       label=_tok(c.get("text", ""))[:10], hover=_hover(c, s - 1, "beam"), score=c["score"], rank=p)
        return node

    if first == 0:
        g.add_node(("root",), layer=0, kind="root", label="prompt", hover="the prompt", score=0.0, rank=0)
    for s in range(first, cur + 1):
        step = steps[s]
        layer = s - first + 1
        for j, c in enumerate(step.get("beams", [])):
            node = ("b", s, j)
            g.add_node(node, layer=layer, kind="on_path" if (s, j) in alive else "dead",
                       label=_tok(c.get("text", ""))[:10], hover=_hover(c, s, f"beam {j}"), score=c["score"], rank=j)
            g.add_edge(parent_node(s, c["parent"]), node)
        for j, c in enumerate(step.get("finished", [])):
            node = ("f", s, j)
            kind = "nbest" if (s, j) in nbest else "dropped"
            g.add_node(node, layer=layer, kind=kind, label=_tok(c.get("text", ""))[:10],
                       hover=_hover(c, s, "finished hypothesis"), score=c["score"], rank=1000 + j)
            g.add_edge(parent_node(s, c["parent"]), node)
        shown: dict[int, int] = {}
        pruned = sorted(enumerate(step.get("pruned", [])), key=lambda jc: -jc[1]["score"])
        for j, c in pruned:
            if shown.get(c["parent"], 0) >= per_beam or sum(shown.values()) >= MAX_PRUNED_DRAWN:
                continue
            shown[c["parent"]] = shown.get(c["parent"], 0) + 1
            node = ("p", s, j)
            g.add_node(node, layer=layer, kind="pruned", label=_tok(c.get("text", ""))[:8],
                       hover=_hover(c, s, "pruned"), score=c["score"], rank=2000 + j)
            g.add_edge(parent_node(s, c["parent"]), node)
    return g


def tree_layout(g: nx.DiGraph) -> dict:
    """x = step (networkx multipartite layout by layer); in each layer the children sit in their parents'
    order, kept beams first, so the drawing reads like a tree."""
    if not g:
        return {}
    pos = nx.multipartite_layout(g, subset_key="layer", align="vertical")
    by_layer: dict[int, list] = {}
    for n, d in g.nodes(data=True):
        by_layer.setdefault(d["layer"], []).append(n)
    y: dict = {}
    for layer in sorted(by_layer):
        nodes = by_layer[layer]

        def key(n):
            preds = list(g.predecessors(n))
            py = y.get(preds[0], 0.0) if preds else 0.0
            return (-py, g.nodes[n]["rank"])
        nodes.sort(key=key)
        m = len(nodes)
        for r, n in enumerate(nodes):
            y[n] = (m - 1) / 2 - r
    return {n: (pos[n][0], y[n]) for n in g}


def tree_figure(steps: list[dict], cur: int, window: int = TREE_STEPS, height: int | None = None) -> go.Figure:
    fig = go.Figure()
    if not steps:
        return fig
    g = tree_graph(steps, cur, window)
    pos = tree_layout(g)
    for kind, colour, width, dash in (("dead", L.FAINT, 1, "solid"), ("pruned", L.FAINT, 1, "dot"),
                                      ("dropped", L.FAINT, 1, "dot"), ("nbest", IN_NBEST, 2, "solid"),
                                      ("on_path", L.NEUTRAL, 3, "solid")):
        xs, ys = [], []
        for a, b in g.edges():
            if g.nodes[b]["kind"] == kind:
                xs += [pos[a][0], pos[b][0], None]
                ys += [pos[a][1], pos[b][1], None]
        if xs:
            fig.add_scatter(x=xs, y=ys, mode="lines", hoverinfo="skip", showlegend=False,
                            line=dict(color=colour, width=width, dash=dash))
    for kind in ("root", "pruned", "dead", "dropped", "on_path", "nbest"):
        nodes = [n for n, d in g.nodes(data=True) if d["kind"] == kind]
        if not nodes:
            continue
        finished = kind in ("nbest", "dropped")
        fig.add_scatter(
            x=[pos[n][0] for n in nodes], y=[pos[n][1] for n in nodes], mode="markers+text", name=LABELS[kind],
            showlegend=kind != "root", text=[plot_text(g.nodes[n]["label"]) for n in nodes],
            textposition="middle right", textfont=dict(size=10 if kind == "pruned" else 12),
            marker=dict(size=9 if kind == "pruned" else 15, color=COLOURS[kind],
                        symbol="star" if finished else "circle", line=dict(color=L.NEUTRAL, width=1)),
            hovertext=[g.nodes[n]["hover"] for n in nodes], hoverinfo="text")
    first = W.first_row(cur, window)
    note = "steps grow to the right; the thick line leads to the beams kept now"
    note += W.steps_note(first, cur, len(steps))
    if len({c.get("group", 0) for c in steps[cur].get("beams", [])}) > 1:
        note += " · hover a node for its group and diversity penalty"
    per_layer: dict[int, int] = {}
    for _, d in g.nodes(data=True):
        per_layer[d["layer"]] = per_layer.get(d["layer"], 0) + 1
    if height is None:
        height = max(360, 170 + 20 * max(per_layer.values(), default=1))
    fig.update_layout(height=height, margin=dict(l=10, r=10, t=40, b=10), hovermode="closest",
                      xaxis=dict(visible=False), yaxis=dict(visible=False))
    s = summary(steps, cur)
    head = f"done ({s['stop']})" if s["stop"] else f"{s['beams']} beams kept"
    L.title(fig, plot_text(f"Beam tree at step {cur}: {head}"), note)
    L.legend_below(fig, axis_title=False, rows=2)
    L.themed(fig)
    return fig


# ---- scores over the steps ----------------------------------------------------------------------------
def scores_figure(steps: list[dict], cur: int, height: int = 320) -> go.Figure:
    """Per step: the best running beam's score if it ended now (sum of log p / length ** length_penalty, the
    bound early stopping judges it by), and the best and the worst hypothesis of the n-best list."""
    xs = list(range(cur + 1))
    run, best, worst = [], [], []
    for t, s in enumerate(steps[: cur + 1]):
        lp = s.get("length_penalty", 1.0)
        top = max((b["score"] for b in s.get("beams", [])), default=None)
        run.append(None if top is None else top / max(1, s.get("length", t + 1)) ** lp)
        nb = s.get("nbest") or []
        best.append(nb[0].get("score") if nb else None)
        worst.append(nb[-1].get("score") if nb else None)
    fig = go.Figure()
    for name, ys, colour, dash in (("best running beam, if it ended now", run, ON_PATH, "solid"),
                                   ("best finished", best, IN_NBEST, "solid"),
                                   ("worst finished in the n-best", worst, IN_NBEST, "dot")):
        px, py = W.line_points(xs, ys, keep=cur)
        fig.add_scatter(x=px, y=py, mode="lines+markers", name=name, line=dict(color=colour, dash=dash),
                        marker=dict(size=5), connectgaps=False)
    fig.add_vline(x=cur, line=dict(color=L.NEUTRAL, dash="dot"))
    fig.update_layout(height=height, margin=dict(l=10, r=10, t=40), xaxis_title="step",
                      yaxis_title="normalised score")
    L.title(fig, "Scores per step", "score / length ** length_penalty · with early_stopping false and the n-best "
            "list full, the search stops once the running line is below the dotted one"
            + W.downsampled_note(len(xs), len(W.line_points(xs, run, keep=cur)[0])))
    L.legend_below(fig)
    L.themed(fig)
    return fig
