"""Lookahead view: the 2-D window with its predictions and the verified n-grams, the n-gram pool replayed
from the step records, the candidates table and running stats.

Pure functions of step records (engine/methods/lookahead.py): no torch, no streamlit. Split from viz/jacobi.py,
which keeps what the two views share (the cell states, `tok`, the token stream) and re-exports these names.
"""
from __future__ import annotations

import pandas as pd
import plotly.graph_objects as go

from viz import layout as L
from viz import legend
from viz import window as W
from viz.jacobi import tok
from viz.safe import plot_text


def lookahead_window_figure(step: dict, final_ids: list[int] | None = None) -> go.Figure:
    """The 2-D lookahead window (levels x output position), the newest level's predictions, and the
    verification branch (candidate n-grams) with what was accepted. Each harvested n-gram is a diagonal."""
    final = final_ids or []
    window = step.get("window", [])
    base = step.get("base", 0)
    rows: list[tuple[str, list[tuple[int, str, str, str]]]] = []  # label, [(pos, text, colour, hover)]
    # hover texts are built with plot_text(repr(token)); labels go through tok()
    rows.append(("last token", [(base - 1, step.get("last_text", ""), legend.JACOBI_COMMITTED,
                                 "the last committed token (key of the verified n-grams)")]))
    for lv in window:
        cells_ = []
        for p, t, i in zip(lv["positions"], lv["text"], lv["ids"]):
            right = 0 <= p < len(final) and final[p] == i
            cells_.append((p, t, legend.JACOBI_FIXED if right else legend.JACOBI_GUESS,
                           f"level {lv['level']}, position {p}: {plot_text(repr(t))}"
                           + (" (equals the final output)" if right else "")))
        rows.append((f"level {lv['level']}", cells_))
    f = min(step.get("fill_level", len(window) - 1), len(window) - 1)
    if window:
        lv = window[f]
        pred_pos = [p + 1 for p in lv["positions"]]
        rows.append(("predicted", [(p, t, "#F4D35E", f"prediction from level {f}: {plot_text(repr(t))}")
                                   for p, t in zip(pred_pos, step.get("level_out_text", []))]))
    best = step.get("best")
    a = step.get("accepted_len", 0)
    candidates = step.get("candidates", [])
    shown = _candidates_shown(len(candidates), best, W.MAX_ROWS - len(rows) - 1)
    for g in shown:
        cnd = candidates[g]
        cells_ = []
        for d, (i, t) in enumerate(zip(cnd["ids"], cnd["text"])):
            p = base + d
            if g == best and d < a:
                col, what = legend.ACCEPTED, "accepted"
            elif d < cnd.get("accepted_len", 0):
                col, what = "#A8D5A2", "matches (shorter than the accepted one)"
            elif d == cnd.get("accepted_len", 0):
                col, what = legend.REJECTED, "rejected"
            else:
                col, what = legend.UNVERIFIED, "after a rejection"
            cells_.append((p, t, col, f"candidate {g}, depth {d}: {plot_text(repr(t))} — {what}"))
        rows.append((f"cand {g}", cells_))
    bonus_pos = base + a
    rows.append(("committed", [(base + d, t, legend.ACCEPTED, "accepted from the pool")
                               for d, t in enumerate(step.get("accepted_text", []))]
                 + [(bonus_pos, step.get("bonus_text", ""), legend.BONUS,
                     "the model's own next token (bonus / correction)")]))
    all_pos = [p for _, cs in rows for p, *_ in cs]
    lo, hi = min(all_pos), max(all_pos)
    fig = go.Figure()
    ys = [lab for lab, _ in rows]
    columns = hi - lo + 1
    cell = int(max(30, min(44, L.GRID_WIDTH_PX / columns * 0.9)))
    size = int(max(9, min(12, cell / 3.6)))        # a 6-character label inside its square
    for y, (lab, cs) in enumerate(rows):
        if not cs:
            continue
        fig.add_scatter(x=[p for p, *_ in cs], y=[y] * len(cs), mode="markers+text",
                        marker=dict(symbol="square", size=cell, color=[c for _, _, c, _ in cs],
                                    line=dict(color="#666", width=0.5)),
                        text=[tok(t, 6) for _, t, _, _ in cs],
                        textfont=dict(size=size, color=[L.text_on(c) for _, _, c, _ in cs]),
                        hovertext=[h for *_, h in cs], hoverinfo="text", showlegend=False)
    # the n-grams harvested this step: diagonals through the window
    if step.get("phase") == "lookahead" and len(window) >= 2:
        # one diagonal per column that every level reaches (all of them in the engine's records)
        n_cols = min([len(window[1]["ids"]), len(window[0]["positions"]) + 1]
                     + [len(lv["positions"]) for lv in window[1:]])
        for col in range(n_cols):
            xs, yl = [], []
            if col == 0:
                xs.append(base - 1)
                yl.append(0)
            else:
                xs.append(window[0]["positions"][col - 1])
                yl.append(1)
            for lv in window[1:]:
                xs.append(lv["positions"][col])
                yl.append(1 + lv["level"])
            xs.append(window[-1]["positions"][col] + 1)
            yl.append(1 + len(window))
            fig.add_scatter(x=xs, y=yl, mode="lines", line=dict(color=L.FAINT, width=1),
                            hoverinfo="skip", showlegend=col == 0, name="harvested n-gram (one per column)")
    fig.update_layout(margin=dict(l=10, r=10, t=40, b=10),
                      xaxis=dict(title="output position", range=[lo - 0.7, hi + 0.7], dtick=1),
                      yaxis=dict(tickmode="array", tickvals=list(range(len(ys))), ticktext=ys,
                                 range=[len(ys) - 0.5, -0.5]))
    L.title(fig, f"Step {step.get('index')}: window, predictions, verified n-grams",
            f"{len(shown)} of {len(candidates)} candidates shown" if len(shown) < len(candidates) else None)
    # a row as tall as its squares (+6 px), whatever the margins
    fig.update_layout(height=fig.layout.margin.t + L.LEGEND_BELOW_PX + (cell + 6) * len(rows))
    L.legend_below(fig)
    L.themed(fig)
    return fig


def _pool_add(pool: dict[int, list[tuple]], gram: list[int], guess_set_size: int) -> None:
    key, tail = int(gram[0]), tuple(gram[1:])
    lst = pool.setdefault(key, [])
    if tail in lst:
        lst.remove(tail)
    elif len(lst) >= guess_set_size:
        lst.pop(0)
    lst.append(tail)


def _pool_step(pool: dict[int, list[tuple]], step: dict, guess_set_size: int) -> None:
    for key in ("seeded", "harvested", "appended"):
        for gram in step.get(key, []):
            _pool_add(pool, gram, guess_set_size)


def _candidates_shown(n: int, best: int | None, limit: int) -> list[int]:
    """Which verified n-grams get a row: the first `limit`, and the accepted one if it is later."""
    shown = list(range(min(n, max(1, limit))))
    if best is not None and best < n and best not in shown:
        shown[-1] = best
    return shown


def replay_pool(steps: list[dict], upto: int, guess_set_size: int) -> dict[int, list[tuple]]:
    """Rebuild the n-gram pool as it was after step `upto` from the records (same LRU as the engine)."""
    pool: dict[int, list[tuple]] = {}
    for s in steps[: upto + 1]:
        _pool_step(pool, s, max(1, guess_set_size))
    return pool


class PoolReplay(W.StepCache):
    """replay_pool at any step, replayed from the nearest checkpoint (a copy of the pool every EVERY
    steps, made as the replay first passes there) rather than from the first step."""
    EVERY = 64

    def __init__(self, guess_set_size: int):
        self.guess_set_size = max(1, guess_set_size)
        super().__init__()

    def reset(self) -> None:
        self._checkpoints: list[dict] = [{}]  # [i]: the pool after i * EVERY steps

    def at(self, steps: list[dict], upto: int) -> dict[int, list[tuple]]:
        with self._lock:
            self._sync(steps, (len(self._checkpoints) - 1) * self.EVERY)
            base = min((upto + 1) // self.EVERY, len(self._checkpoints) - 1)
            pool = _copy_pool(self._checkpoints[base])
            for i in range(base * self.EVERY, upto + 1):
                _pool_step(pool, steps[i], self.guess_set_size)
                if (i + 1) == len(self._checkpoints) * self.EVERY:
                    self._checkpoints.append(_copy_pool(pool))
            return pool


def _copy_pool(pool: dict[int, list[tuple]]) -> dict[int, list[tuple]]:
    return {k: list(v) for k, v in pool.items()}


def pool_at(trace, upto: int, guess_set_size: int) -> dict[int, list[tuple]]:
    """replay_pool(trace.steps, upto, guess_set_size), from checkpoints kept on the trace."""
    return W.cached(trace, ("pool", guess_set_size), lambda: PoolReplay(guess_set_size)).at(trace.steps, upto)


def pool_table(steps: list[dict], upto: int, guess_set_size: int, token_text, only_key: int | None = None,
               limit: int = 200, pool: dict | None = None) -> pd.DataFrame:
    """The pool after step `upto` as a table (most recently used last within a key). `token_text(id)` maps
    ids to text (the page passes the tokenizer's; a replay without a model can pass str). `pool` is that
    pool when the caller has it (pool_at); else it is replayed here."""
    if pool is None:
        pool = replay_pool(steps, upto, guess_set_size)
    nxt = steps[upto + 1] if upto + 1 < len(steps) else None
    verified = {tuple(c["ids"]) for c in (nxt or {}).get("candidates", [])} if nxt else set()
    rows = []
    keys = [only_key] if only_key is not None else list(pool)
    for key in keys:
        for rank, tail in enumerate(reversed(pool.get(key, []))):
            rows.append({"key": token_text(key), "n-gram continuation": "".join(token_text(t) for t in tail),
                         "LRU rank (0 = newest)": rank,
                         "verified next step": "yes" if (nxt and key == nxt.get("last_id") and tail in verified) else ""})
            if len(rows) >= limit:
                return pd.DataFrame(rows)
    return pd.DataFrame(rows)


def _record_texts(m: dict[int, str], s: dict) -> None:
    """The token texts a lookahead step records, by id."""
    m.update({int(k): v for k, v in s.get("vocab", {}).items()})
    for lv in s.get("window", []):
        m.update(zip(lv["ids"], lv["text"]))
    for c in s.get("candidates", []):
        m.update(zip(c["ids"], c["text"]))
    m.update(zip(s.get("level_out", []), s.get("level_out_text", [])))
    if "last_id" in s:
        m[s["last_id"]] = s.get("last_text", "")


class TokenTexts(W.StepCache):
    """Token id -> text from the texts recorded in the steps (a replay has no tokenizer), extended with
    the new steps only."""

    def reset(self) -> None:
        self._texts: dict[int, str] = {}
        self._seen = 0

    def lookup(self, steps: list[dict]):
        with self._lock:
            self._sync(steps, self._seen)
            for s in steps[self._seen:]:
                _record_texts(self._texts, s)
            self._seen = len(steps)
        texts = self._texts
        return lambda t: texts.get(t, f"#{t}")


def token_text_at(trace):
    """id -> text from every step of the trace so far (kept on the trace between refreshes)."""
    return W.cached(trace, "token texts", TokenTexts).lookup(trace.steps)


def candidates_table(step: dict) -> pd.DataFrame:
    best = step.get("best")
    return pd.DataFrame([{"#": g, "n-gram": "".join(c["text"]), "tokens": " | ".join(c["text"]),
                          "accepted prefix": c.get("accepted_len", 0), "chosen": "✓" if g == best else ""}
                         for g, c in enumerate(step.get("candidates", []))])


def lookahead_stats(steps: list[dict]) -> dict:
    forwards = len(steps)
    tokens = sum(s.get("committed", 0) for s in steps)
    with_c = [s for s in steps if s.get("candidates")]
    return {"forwards": forwards, "tokens": tokens, "compression_ratio": tokens / forwards if forwards else None,
            "steps_with_candidates": len(with_c),
            "mean_accepted_len": sum(s.get("accepted_len", 0) for s in steps) / forwards if forwards else None,
            "pool_size": steps[-1].get("pool_size") if steps else 0}


LOOKAHEAD_SUMS = W.sums(tokens=lambda s: s.get("committed", 0), with_candidates=lambda s: 1 if s.get("candidates") else 0,
                        accepted=lambda s: s.get("accepted_len", 0))


def lookahead_stats_at(trace, cur: int) -> dict:
    """lookahead_stats(trace.steps[: cur + 1]) from running sums kept on the trace."""
    t = W.running_at(trace, "lookahead", LOOKAHEAD_SUMS, cur)
    forwards = cur + 1
    return {"forwards": forwards, "tokens": t["tokens"], "compression_ratio": t["tokens"] / forwards,
            "steps_with_candidates": t["with_candidates"], "mean_accepted_len": t["accepted"] / forwards,
            "pool_size": trace.steps[cur].get("pool_size")}
