"""Verification rules: which drafted path the target accepts, and the token it appends.

Each rule takes the draft tree and the target's distributions at every node (one forward) and
returns a Verdict: the accepted node path (root first), the appended token and its origin, and
per node the decision with its numbers. Status values: root, accepted, rejected, unverified;
the appended token's origin is bonus (the accepted path ended at a leaf), corrected (the target's
own choice after a rejection) or resampled (drawn from the residual after rejections).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

from engine import sampling as S


@dataclass
class Verdict:
    path: list[int]                     # accepted nodes, root first
    token: int                          # appended token (bonus / corrected / resampled)
    origin: str
    status: list[str]
    u: list[float | None] = field(default_factory=list)
    ratio: list[float | None] = field(default_factory=list)   # acceptance probability tested


def _blank(tree):
    n = len(tree)
    return ["root"] + ["unverified"] * (n - 1), [None] * n, [None] * n


class Rows:
    """The target's logits per tree node, computed from the final hidden states only where needed.

    On a CPU the LM head is a fifth of the per-token cost, so rows of rejected branches are never
    computed unless asked for (a table drafter learning from them, or the step record)."""

    def __init__(self, hidden: torch.Tensor | None, head=None, logits: torch.Tensor | None = None, cfg=None):
        self.hidden, self.head, self.cfg = hidden, head, cfg
        self.n = hidden.shape[0] if hidden is not None else logits.shape[0]
        self._logits: dict[int, torch.Tensor] = {}
        self._p: dict[int, torch.Tensor] = {}
        if logits is not None:
            self._logits = {i: logits[i] for i in range(self.n)}

    def logits(self, i: int) -> torch.Tensor:
        if i not in self._logits:
            self._logits[i] = self.head(self.hidden[i]).float()
        return self._logits[i]

    def p(self, i: int) -> torch.Tensor:
        """The warped target distribution at node i (what sampling draws from)."""
        if i not in self._p:
            self._p[i] = S.warp(self.logits(i), self.cfg).softmax(-1)
        return self._p[i]

    def all_logits(self) -> torch.Tensor:
        missing = [i for i in range(self.n) if i not in self._logits]
        if missing:
            rows = self.head(self.hidden[missing]).float()
            for j, i in enumerate(missing):
                self._logits[i] = rows[j]
        return torch.stack([self._logits[i] for i in range(self.n)])

    def all_p(self) -> torch.Tensor:
        return torch.stack([self.p(i) for i in range(self.n)])


BATCHED_READOUT = 64   # trees up to this many nodes get their logits in one LM-head call


def greedy(tree, rows: Rows) -> Verdict:
    """Longest path whose every token is the target's argmax at its parent."""
    status, u, ratio = _blank(tree)
    kids = tree.child_lists()
    if rows.hidden is not None and 1 < rows.n <= BATCHED_READOUT:
        rows.all_logits()     # one pass over the LM head's weight for every row (row by row: one pass each)
    path, cur = [0], 0
    while True:
        want = int(rows.logits(cur).argmax())
        nxt = None
        for c in kids[cur]:
            if tree.nodes[c].token == want and nxt is None:
                status[c] = "accepted"
                nxt = c
            else:
                status[c] = "rejected"
        if nxt is None:
            return Verdict(path, want, "corrected" if kids[cur] else "bonus", status, u, ratio)
        path.append(nxt)
        cur = nxt


def _residual(p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    r = (p - q).clamp_min(0)
    s = r.sum()
    return r / s if s > 0 else p


def sampling(tree, rows: Rows, gen) -> Verdict:
    """Lossless speculative sampling over a chain or tree (recursive rejection over siblings).

    rows.p(i): the target's warped distribution at node i. Children of a node are tried in
    their draw order. Stochastic trees (children drawn from q without replacement): accept x if
    u < min(1, p(x)/q(x)); on rejection p <- norm(max(0, p - q)) and x is removed from q.
    Point-mass proposals: accept x if u < p(x); on rejection x is zeroed in p and p renormalised.
    With no child left, the appended token is drawn from the current p.
    """
    status, us, ratios = _blank(tree)
    kids = tree.child_lists()
    path, cur = [0], 0
    while True:
        p_node = rows.p(cur)
        p_cur = p_node.clone()
        q_cur = tree.q_dists[cur].clone().float() if tree.stochastic and kids[cur] else None
        nxt = None
        for c in kids[cur]:
            if nxt is not None:
                break
            x = tree.nodes[c].token
            if q_cur is not None:
                qx = float(q_cur[x])
                r = min(1.0, float(p_cur[x]) / qx) if qx > 0 else 0.0
            else:
                r = min(1.0, float(p_cur[x]))
            u = float(torch.rand((), generator=gen, device=p_node.device))
            us[c], ratios[c] = u, r
            if u < r:
                status[c] = "accepted"
                nxt = c
            else:
                status[c] = "rejected"
                if q_cur is not None:
                    p_cur = _residual(p_cur, q_cur)
                    q_cur[x] = 0
                    q_cur = q_cur / q_cur.sum() if q_cur.sum() > 0 else q_cur
                else:
                    p_cur[x] = 0
                    s = p_cur.sum()
                    p_cur = p_cur / s if s > 0 else p_node.clone()
        if nxt is None:
            tok = int(S.sample(p_cur, gen))
            rejected = any(status[c] == "rejected" for c in kids[cur])
            return Verdict(path, tok, "resampled" if rejected else "bonus", status, us, ratios)
        path.append(nxt)
        cur = nxt


def typical(tree, rows: Rows, gen, epsilon: float, alpha: float) -> Verdict:
    """Medusa's typical acceptance (lossy): accept x if p(x) > min(epsilon, alpha * exp(-H(p)))."""
    status, us, ratios = _blank(tree)
    p = rows.all_p()
    kids = tree.child_lists()
    ent = S.entropy(p)
    thresh = torch.minimum(torch.full_like(ent, epsilon), alpha * torch.exp(-ent))
    ok = [False] + [float(p[n.parent][n.token]) > float(thresh[n.parent]) for n in tree.nodes[1:]]
    for c, n in enumerate(tree.nodes[1:], 1):
        ratios[c] = float(thresh[n.parent])   # the threshold the token's p was compared with

    def longest(i):  # deepest all-typical path below i (first in sibling order on ties)
        best = [i]
        for c in kids[i]:
            if ok[c]:
                cand = [i] + longest(c)
                if len(cand) > len(best):
                    best = cand
        return best

    path = longest(0)
    on_path = set(path)
    for i in path:
        for c in kids[i]:
            status[c] = "accepted" if c in on_path else "rejected"
    last = path[-1]
    tok = int(S.sample(p[last], gen))
    return Verdict(path, tok, "corrected" if kids[last] else "bonus", status, us, ratios)
